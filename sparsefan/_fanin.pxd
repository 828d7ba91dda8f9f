# The C interface of csrc/fanin.h (see that header for shapes and layouts).
from libc.stdint cimport int32_t, int64_t

cdef extern from "fanin.h" nogil:
    int sf_openmp_enabled()
    int sf_openmp_max_threads()
    enum: SF_PARALLEL_MIN_WORK
    int SF_CPU_N_VARIANTS
    int sf_cpu_variant()
    const char *sf_cpu_variant_name(int variant)
    int sf_cpu_variant_supported(int variant)
    int sf_set_cpu_variant(int variant)
    void sf_fanin_forward(float *y, const float *x, const float *W, const float *b,
                          const int64_t *indptr, const int32_t *indices,
                          int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                          int relu, int n_threads)
    void sf_fanin_backward_input(float *dx, const float *dy, const float *W,
                                 const int64_t *t_indptr, const int32_t *t_rows,
                                 const int64_t *t_slots,
                                 int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out,
                                 int64_t B, int accumulate, int n_threads)
    void sf_fanin_backward_input_relu(float *dz, const float *dy, const float *W, const float *x,
                                      const int64_t *t_indptr, const int32_t *t_rows,
                                      const int64_t *t_slots, int64_t n_in, int64_t n_out,
                                      int64_t c_in, int64_t c_out, int64_t B, int n_threads)
    void sf_fanin_backward_params(float *dW, float *db, const float *dy, const float *x,
                                  const int64_t *indptr, const int32_t *indices,
                                  int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out,
                                  int64_t B, int n_threads)
    void sf_relu_backward(float *dz, const float *dy, const float *y, int64_t n, int n_threads)
    void sf_transpose(float *out, const float *inp, int64_t rows, int64_t cols, int n_threads)
    void sf_relu_backward_transpose(float *dzt, const float *dy, const float *y, int64_t rows,
                                    int64_t cols, int n_threads)

    ctypedef struct sf_chain_layer:
        const float *W
        const float *b
        const int64_t *indptr
        const int32_t *indices
        int64_t n_in, n_out, c_in, c_out
        int relu
    void sf_network_buffer_sizes(const sf_chain_layer *layers, int n_layers, int64_t B,
                                 int last_in_buffer, int64_t *even, int64_t *odd)
    int sf_network_forward(float *out, const float *x, const sf_chain_layer *layers, int n_layers,
                           int64_t B, float *even, float *odd, int batch_major_out,
                           int n_threads)


cdef extern from "certify.h" nogil:
    void sf_certify_mean_logits(int64_t *pred, double *r2, int64_t *r0, const double *S,
                                int64_t C, int64_t B, const double *K, const double *cum,
                                int64_t R)


from libc.stdint cimport int8_t, uint16_t

cdef extern from "int8.h" nogil:
    enum: SF_I8_WIDE
    enum: SF_I8_DOT
    int sf_i8_variant()
    const char *sf_i8_variant_name(int variant)
    ctypedef struct sf_i8_layer:
        const int8_t *w
        const int64_t *wofs
        const int64_t *indptr
        const int32_t *indices
        const uint16_t *indices16
        const float *multiplier
        const float *bias
        int64_t n_in, n_out, c_in, c_out
        int relu
        int layout
        float out_inv_scale
        int64_t max_terms
    int sf_i8_choose_layout(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out)
    int64_t sf_i8_pack_offsets(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out,
                               int layout, int64_t *wofs)
    void sf_i8_pack(int8_t *w, const int64_t *wofs, const int8_t *qweight,
                    const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out, int layout)
    int64_t sf_i8_scratch_bytes(const sf_i8_layer *layers, int n_layers, int64_t B, int n_threads)
    void sf_i8_network_forward(float *out, const float *x, const sf_i8_layer *layers,
                               int n_layers, float in_inv_scale, int64_t B, void *scratch,
                               int n_threads)

cdef extern from "pool.h" nogil:
    enum: SF_SPIN_WAIT, SF_SPIN_IDLE
    int sf_pool_spin_us(int which, int us)
    const char *sf_pool_backend()
