//! Shared memory files in the POSIX shm namespace (`/dev/shm` on Linux).
//!
//! A segment named `NAME` is the tmpfs file `/dev/shm/shmkit.NAME`, the same
//! object `shm_open("/shmkit.NAME")` opens, so C programs can map it too.
//! New segments are born unnamed (`O_TMPFILE`), initialised, and only then
//! given their name with `linkat`: nobody can open a half-initialised
//! segment, and a creator that dies before `linkat` leaves nothing behind.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{self, AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Where the POSIX shm namespace lives on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// File identity: device and inode. Two handles name the same segment
/// exactly when these match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// What `fstat` tells about a segment file.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    /// Device and inode.
    pub id: FileId,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Number of names (0 once the segment was removed).
    pub nlink: u64,
}

fn dir() -> Result<BorrowedFd<'static>, Errno> {
    static DIR: OnceLock<Result<OwnedFd, Errno>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        fs::open(
            SHM_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    });
    match dir {
        Ok(fd) => Ok(fd.as_fd()),
        Err(e) => Err(*e),
    }
}

/// Creates an unnamed shm file with exactly `mode` (umask does not apply)
/// and size `size`. Zero-filled, as tmpfs always is.
pub fn create_unnamed(mode: u32, size: u64) -> Result<OwnedFd, Errno> {
    let fd = fs::openat(
        dir()?,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    // The umask trimmed the mode given to open: set exactly what was asked.
    fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    fs::ftruncate(&fd, size)?;
    Ok(fd)
}

/// Gives the unnamed file `fd` the name `file_name`. Fails with `EEXIST`
/// if the name is taken: this is the atomic "create new" step.
pub fn publish(fd: BorrowedFd<'_>, file_name: &str) -> Result<(), Errno> {
    let dir = dir()?;
    // Through /proc (works for every user); AT_EMPTY_PATH needs
    // CAP_DAC_READ_SEARCH, so it is only the fallback when /proc is absent.
    let proc_path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
    match fs::linkat(
        fs::CWD,
        proc_path.as_str(),
        dir,
        file_name,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Err(Errno::NOENT) => fs::linkat(fd, "", dir, file_name, AtFlags::EMPTY_PATH),
        other => other,
    }
}

/// Opens the named shm file, read-write or read-only. Never follows a
/// symbolic link.
pub fn open(file_name: &str, writable: bool) -> Result<OwnedFd, Errno> {
    let access = if writable {
        OFlags::RDWR
    } else {
        OFlags::RDONLY
    };
    fs::openat(
        dir()?,
        file_name,
        access | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `fstat` of an open segment file.
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileInfo, Errno> {
    let st = fs::fstat(fd)?;
    Ok(FileInfo {
        id: FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        nlink: st.st_nlink as u64,
    })
}

/// Identity of whatever the name points to now (no symlink following).
pub fn id_of_name(file_name: &str) -> Result<FileId, Errno> {
    let st = fs::statat(dir()?, file_name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Removes the name.
pub fn unlink(file_name: &str) -> Result<(), Errno> {
    fs::unlinkat(dir()?, file_name, AtFlags::empty())
}

/// Removes the name only if it still points to `id`. Returns whether it
/// removed it. (A name re-created between the check and the unlink by an
/// explicit remove-and-create is the one race left; see ARCHITECTURE.md.)
pub fn unlink_if_same(file_name: &str, id: FileId) -> Result<bool, Errno> {
    match id_of_name(file_name) {
        Ok(now) if now == id => match unlink(file_name) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e),
        },
        Ok(_) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads up to `buf.len()` bytes at `offset` (short at end of file).
/// Used for headers so that a file shorter than it claims gives an error,
/// never a SIGBUS.
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Every file name in the shm directory that starts with `prefix`.
pub fn names_with_prefix(prefix: &str) -> Result<Vec<String>, Errno> {
    let dirfd = fs::openat(
        dir()?,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = fs::Dir::read_from(&dirfd)?;
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if name.starts_with(prefix) {
            out.push(name.into_owned());
        }
    }
    out.sort();
    Ok(out)
}
