"""Files written atomically, the one implementation every writer uses (model files,
checkpoints, the C and ONNX exports, dataset downloads): a temporary beside the target, flushed,
fsynced and renamed over it, the directory fsynced after; errors name the target."""
import os


def check_output_path(path, name="path"):
    """Refuse, before any long work, an output path that cannot be written: a directory, or
    one whose parent directory is missing or not writable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name} {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{name} {path!r}: directory {parent!r} is not writable")
    return path


def _temp_prefix(path):
    return f".{os.path.basename(path)}.tmp-"


def _remove_stale_temps(path):
    """Temporary files of earlier writes of ``path`` whose process died (SIGKILL) before it
    could remove them: named .<target>.tmp-<pid>-..., removed when <pid> no longer runs."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        pid = n[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: maybe writing it now
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, OSError):
            continue
        try:
            os.unlink(os.path.join(directory, n))
        except OSError:
            pass


def atomic_write(path, write):
    """Write ``path`` atomically: ``write(file)`` fills a temporary file in the same directory
    (created with the usual permissions, 0666 less the umask), which is flushed, fsynced and
    renamed over ``path``; the directory is fsynced after the rename. On any failure the old
    file is untouched and the temporary removed; temporaries left by killed writers of the same
    target are removed by the next write."""
    path = check_output_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(path)
    for _ in range(100):
        tmp = os.path.join(directory, f"{_temp_prefix(path)}{os.getpid()}-"
                                      f"{os.urandom(4).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary file beside {path!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
