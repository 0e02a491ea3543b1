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
use rustix::path::Arg;

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
    /// Regular file, FIFO, directory, socket... (only regular files can
    /// be segments).
    pub file_type: fs::FileType,
}

/// Free and total bytes of the shm file system (`statvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged user may still allocate (`f_bavail`).
    pub free: u64,
    /// Size of the file system (`f_blocks`); 0 for an unlimited tmpfs.
    pub total: u64,
}

/// How much room the shm file system has now.
pub fn space() -> Result<Space, Errno> {
    let v = fs::fstatvfs(dir()?)?;
    Ok(Space {
        free: v.f_bavail.saturating_mul(v.f_frsize),
        total: v.f_blocks.saturating_mul(v.f_frsize),
    })
}

/// Why the shm directory cannot hold a huge-page segment, or its huge
/// page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugeSupport {
    /// Transparent huge pages back new files there; segments should fill
    /// whole pages of this many bytes.
    Yes {
        /// The PMD huge page size (`hpage_pmd_size`, 2 MiB on x86-64).
        page_size: u64,
    },
    /// Not possible, and why (a sentence for the error message).
    No(String),
}

/// Whether files created in the shm directory get transparent huge pages:
/// a tmpfs mounted with `huge=always` or `huge=within_size` (or any tmpfs
/// when `shmem_enabled` is `force`), not `deny`, and with a size limit
/// (`size=0`, unlimited, is refused: there a full machine would only be
/// found by the page allocator, not as `ENOSPC` by the reservation).
pub fn huge_support() -> Result<HugeSupport, Errno> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let no = |why: String| Ok(HugeSupport::No(why));
    let sys = |f: &str| {
        std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{f}"))
            .unwrap_or_default()
    };
    let fs = fs::fstatfs(dir()?)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    match fs.f_type as i64 {
        TMPFS_MAGIC => {}
        HUGETLBFS_MAGIC => {
            return no(format!(
                "{SHM_DIR} is a hugetlbfs, which shmkit does not support (no pwrite/pread \
                 there); mount a tmpfs with huge=always instead"
            ))
        }
        t => return no(format!("{SHM_DIR} is not a tmpfs (f_type {t:#x})")),
    }
    let policy = sys("shmem_enabled");
    if policy.contains("[deny]") {
        return no(
            "transparent huge pages are disabled for every tmpfs (shmem_enabled is deny)".into(),
        );
    }
    let force = policy.contains("[force]");
    let mount_huge =
        mount_huge_option(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    if !force && !matches!(mount_huge.as_deref(), Some("always" | "within_size")) {
        return no(format!(
            "the tmpfs on {SHM_DIR} is mounted with huge={} (needs always or within_size: \
             mount -o remount,huge=within_size {SHM_DIR})",
            mount_huge.as_deref().unwrap_or("never")
        ));
    }
    if space()?.total == 0 {
        return no(format!(
            "the tmpfs on {SHM_DIR} has no size limit (size=0): mount it with a size so that \
             a full file system is an error at creation"
        ));
    }
    let page_size = sys("hpage_pmd_size").trim().parse().unwrap_or(2 << 20);
    Ok(HugeSupport::Yes { page_size })
}

/// The `huge=` option of the mount that holds [`SHM_DIR`], from
/// `/proc/self/mountinfo` text: the last (topmost) mount whose mount point
/// is the longest prefix of the directory. `None` when absent (`never`).
pub fn mount_huge_option(mountinfo: &str) -> Option<String> {
    let mut best: Option<(usize, Option<String>)> = None;
    for line in mountinfo.lines() {
        // id parent maj:min root mount-point opts [optional...] - fstype source super-opts
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else { continue };
        let covers = SHM_DIR == point
            || point == "/"
            || SHM_DIR
                .strip_prefix(point)
                .is_some_and(|r| r.starts_with('/'));
        if !covers {
            continue;
        }
        let Some((_, tail)) = line.split_once(" - ") else {
            continue;
        };
        let huge = tail
            .split(' ')
            .nth(2)
            .unwrap_or("")
            .split(',')
            .find_map(|o| o.strip_prefix("huge="))
            .map(str::to_owned);
        if best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), huge));
        }
    }
    best.and_then(|(_, h)| h)
}

/// Fails with `EFBIG` when a file of `size` bytes would pass this
/// process's `RLIMIT_FSIZE` (`ulimit -f`): growing past it would raise
/// SIGXFSZ, which kills by default, so the library never tries.
pub fn check_file_size_limit(size: u64) -> Result<(), Errno> {
    match rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
        Some(limit) if size > limit => Err(Errno::FBIG),
        _ => Ok(()),
    }
}

/// This process's `RLIMIT_FSIZE` soft limit in bytes, if any.
pub fn file_size_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current
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
///
/// Unless `sparse`, the memory is reserved now with `fallocate`: a full
/// `/dev/shm` fails here with `ENOSPC` (and the unnamed file vanishes
/// with its descriptor) instead of with SIGBUS at the first touch of a
/// page. `EFBIG` if `size` passes `RLIMIT_FSIZE` (checked first, so no
/// SIGXFSZ is ever raised).
pub fn create_unnamed(mode: u32, size: u64) -> Result<OwnedFd, Errno> {
    Ok(create_unnamed_with(mode, size, false, &[])?.0)
}

/// [`create_unnamed`], or with `sparse` an unreserved file (`ftruncate`
/// only: pages are allocated at first touch, and a touch that finds the
/// file system full is SIGBUS), with `head` written at offset 0 (the
/// segment header). Also returns the file's identity (its size in the
/// returned info is 0: it is taken before the reservation).
///
/// A reserved file of at most [`ONE_WRITE_MAX`] bytes is reserved and
/// written by one `pwritev` of `head` and zeros over the whole size: every
/// page is allocated (charged) by it as by `fallocate`, and it saves the
/// separate write of `head`.
pub fn create_unnamed_with(
    mode: u32,
    size: u64,
    sparse: bool,
    head: &[u8],
) -> Result<(OwnedFd, FileInfo), Errno> {
    check_file_size_limit(size)?;
    // O_NOATIME: see `open`. The new file is ours, so it is allowed.
    let fd = with_noatime(|noatime| {
        fs::openat(
            dir()?,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC | noatime,
            Mode::from_raw_mode(mode),
        )
    })?;
    // The umask may have trimmed the mode given to open: set exactly what
    // was asked, but only then (the fstat is needed anyway, for the id).
    let mut info = stat_fd(fd.as_fd())?;
    if info.mode != mode & 0o7777 {
        fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        info.mode = mode & 0o7777;
    }
    if sparse {
        fs::ftruncate(&fd, size)?;
    } else if size <= ONE_WRITE_MAX && head.len() as u64 <= size {
        return write_whole(fd.as_fd(), head, size).map(|()| (fd, info));
    } else {
        reserve(fd.as_fd(), size)?;
    }
    if !head.is_empty() {
        write_at(fd.as_fd(), head, 0)?;
    }
    Ok((fd, info))
}

/// Files up to this size are reserved by writing them whole (see
/// [`create_unnamed_with`]); larger ones with `fallocate`, which zeroes
/// pages in the kernel instead of copying zeros from us.
pub const ONE_WRITE_MAX: u64 = 64 << 10;

/// Writes `head` at offset 0 then zeros up to `size` bytes (`size` ≤
/// [`ONE_WRITE_MAX`]), allocating every page: the reservation and the
/// header in one system call. A full file system fails with `ENOSPC`
/// (`ENOMEM` when the machine, not the mount, is full); a partly written
/// unnamed file goes with its descriptor.
fn write_whole(fd: BorrowedFd<'_>, head: &[u8], size: u64) -> Result<(), Errno> {
    // Never written: its pages stay the shared zero page.
    static ZEROS: [u8; ONE_WRITE_MAX as usize] = [0; ONE_WRITE_MAX as usize];
    let mut done = 0usize;
    let size = size as usize;
    while done < size {
        let h = head.get(done..).unwrap_or(&[]);
        let zeros = &ZEROS[..size - done - h.len()];
        let iov = [std::io::IoSlice::new(h), std::io::IoSlice::new(zeros)];
        match rustix::io::pwritev(fd, &iov, done as u64) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(Errno::NOMEM) => return Err(Errno::NOSPC),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Allocates `size` bytes of the file from offset 0 (and sets its size).
/// tmpfs undoes a partial allocation when it fails, so an error leaves
/// nothing charged. A file system without `fallocate` gets `ftruncate`
/// (sparse) instead.
fn reserve(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    loop {
        match fs::fallocate(fd, fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => return Ok(()),
            // tmpfs checks for signals between pages and undoes the
            // unfinished part: start again.
            Err(Errno::INTR) => continue,
            Err(Errno::OPNOTSUPP) => return fs::ftruncate(fd, size),
            // tmpfs says ENOMEM when the machine, not the mount, is full.
            Err(Errno::NOMEM) => return Err(Errno::NOSPC),
            Err(e) => return Err(e),
        }
    }
}

/// Gives the unnamed file `fd` the name `file_name`. Fails with `EEXIST`
/// if the name is taken: this is the atomic "create new" step.
///
/// `linkat(fd, "", AT_EMPTY_PATH)` links the descriptor directly. Linux
/// allows it to a process with `CAP_DAC_READ_SEARCH` and, since 6.10, to
/// the process whose credentials opened the file (our `O_TMPFILE`); older
/// kernels refuse anyone else with `ENOENT`. The fallback is the same
/// link through the `/proc/self/fd/N` magic link (any user, but a procfs
/// path walk per call). Which one works is remembered per process, so a
/// refused `AT_EMPTY_PATH` costs one extra system call once.
pub fn publish<P: Arg + Copy>(fd: BorrowedFd<'_>, file_name: P) -> Result<(), Errno> {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Whether `AT_EMPTY_PATH` was refused here (a hint: both ways are
    /// correct, so Relaxed suffices).
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    let direct = || link_direct(fd, file_name);
    let via_proc = || link_via_proc(fd, file_name);
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        match direct() {
            // No capability (or credentials changed since the open): use
            // /proc from now on.
            Err(Errno::NOENT) => EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed),
            other => return other,
        }
        return via_proc();
    }
    match via_proc() {
        // No /proc (or the process gained the capability): try directly.
        Err(Errno::NOENT) => direct(),
        other => other,
    }
}

/// `linkat(fd, "", AT_EMPTY_PATH)`: see [`publish`].
fn link_direct<P: Arg>(fd: BorrowedFd<'_>, file_name: P) -> Result<(), Errno> {
    fs::linkat(fd, "", dir()?, file_name, AtFlags::EMPTY_PATH)
}

/// `linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)`: see [`publish`].
fn link_via_proc<P: Arg>(fd: BorrowedFd<'_>, file_name: P) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
    fs::linkat(
        fs::CWD,
        proc_path.as_str(),
        dir()?,
        file_name,
        AtFlags::SYMLINK_FOLLOW,
    )
}

/// Opens the named shm file, read-write or read-only, never blocking and
/// never following a symbolic link (`ELOOP`). The name may be anything
/// another user put there: the caller must check with [`stat_fd`] that it
/// is a regular file before using it (`O_NONBLOCK` makes opening a FIFO
/// return at once; it changes nothing for regular files).
///
/// With `O_NOATIME` when allowed (we own the file, or may act as its
/// owner): shmkit's own header reads (`pread`) and `mmap` then do not
/// update the access time, which on this VM costs about 0.3 µs each (a
/// clock read and an inode update), a few percent of a life cycle. The
/// access time of a segment file means nothing to shmkit.
pub fn open<P: Arg + Copy>(file_name: P, writable: bool) -> Result<OwnedFd, Errno> {
    let access = if writable {
        OFlags::RDWR
    } else {
        OFlags::RDONLY
    };
    with_noatime(|noatime| {
        fs::openat(
            dir()?,
            file_name,
            access
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC
                | noatime,
            Mode::empty(),
        )
    })
}

/// Runs `open` with `O_NOATIME`, and again without it if that was refused
/// (`EPERM`: the file belongs to someone else and we may not act as its
/// owner; any other cause of `EPERM` is then reported by the second try).
fn with_noatime(open: impl Fn(OFlags) -> Result<OwnedFd, Errno>) -> Result<OwnedFd, Errno> {
    match open(OFlags::NOATIME) {
        Err(Errno::PERM) => open(OFlags::empty()),
        other => other,
    }
}

/// What the name is, without opening or following it (`lstat`).
pub fn lstat<P: Arg>(file_name: P) -> Result<FileInfo, Errno> {
    Ok(info_of(&fs::statat(
        dir()?,
        file_name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// Owner uid and whether the shm directory is sticky (`/dev/shm` is
/// `1777`: only a file's owner, the directory's owner or a privileged
/// process may delete it).
pub fn dir_owner_and_sticky() -> Result<(u32, bool), Errno> {
    let st = fs::fstat(dir()?)?;
    Ok((st.st_uid, st.st_mode & 0o1000 != 0))
}

/// Whether this process may create and delete names in the shm directory
/// at all (write and search permission, effective ids).
pub fn dir_writable() -> bool {
    fs::accessat(
        fs::CWD,
        SHM_DIR,
        fs::Access::WRITE_OK | fs::Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .is_ok()
}

/// Writes all of `buf` at `offset`.
pub fn write_at(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `fstat` of an open segment file.
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileInfo, Errno> {
    Ok(info_of(&fs::fstat(fd)?))
}

// `st_nlink` is u64 here but u32 on other Linux targets.
#[allow(clippy::unnecessary_cast)]
fn info_of(st: &fs::Stat) -> FileInfo {
    FileInfo {
        id: FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        nlink: st.st_nlink as u64,
        file_type: fs::FileType::from_raw_mode(st.st_mode),
    }
}

/// Identity of whatever the name points to now (no symlink following).
pub fn id_of_name<P: Arg>(file_name: P) -> Result<FileId, Errno> {
    let st = fs::statat(dir()?, file_name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Removes the name.
pub fn unlink<P: Arg>(file_name: P) -> Result<(), Errno> {
    fs::unlinkat(dir()?, file_name, AtFlags::empty())
}

/// Removes the name only if it still points to `id`. Returns whether it
/// removed it. (A name re-created between the check and the unlink by an
/// explicit remove-and-create is the one race left; see ARCHITECTURE.md.)
pub fn unlink_if_same<P: Arg + Copy>(file_name: P, id: FileId) -> Result<bool, Errno> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topmost_longest_mount_decides_the_huge_option() {
        let info = "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:25 / /dev rw - devtmpfs udev rw\n\
                    31 30 0:26 / /dev/shm rw,nosuid - tmpfs tmpfs rw,size=65536k\n\
                    40 31 0:40 / /dev/shm rw - tmpfs tmpfs rw,size=1048576k,huge=always\n\
                    41 22 0:41 / /dev/shmother rw - tmpfs tmpfs rw,huge=never\n";
        assert_eq!(mount_huge_option(info).as_deref(), Some("always"));
        let lower = info.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(mount_huge_option(&lower), None);
        let within = "1 0 0:1 / / rw - tmpfs tmpfs rw,huge=within_size,size=8m\n";
        assert_eq!(mount_huge_option(within).as_deref(), Some("within_size"));
    }

    /// Both publication paths give the unnamed file its name, atomically
    /// refusing a taken one. (Which one `publish` uses depends on the
    /// kernel and the capabilities; both must work.)
    #[test]
    fn both_link_paths_publish_and_refuse_a_taken_name() {
        type Link = fn(BorrowedFd<'_>, &str) -> Result<(), Errno>;
        let paths: [(&str, Link); 2] = [
            ("direct", |fd, f| link_direct(fd, f)),
            ("proc", |fd, f| link_via_proc(fd, f)),
        ];
        for (how, link) in paths {
            let file = format!("shmkit.unit-link-{how}-{}", std::process::id());
            let fd = create_unnamed(0o600, 4096).unwrap();
            match link(fd.as_fd(), &file) {
                Ok(()) => {}
                // AT_EMPTY_PATH refused (kernel < 6.10 without
                // CAP_DAC_READ_SEARCH): `publish` falls back to /proc.
                Err(Errno::NOENT) if how == "direct" => {
                    eprintln!("linkat(AT_EMPTY_PATH) refused here: fallback path only");
                    continue;
                }
                Err(e) => panic!("{how}: {e}"),
            }
            let id = info_of(&fs::fstat(&fd).unwrap()).id;
            assert_eq!(id_of_name(&file).unwrap(), id, "{how}");
            let other = create_unnamed(0o600, 4096).unwrap();
            assert_eq!(link(other.as_fd(), &file), Err(Errno::EXIST), "{how}");
            assert_eq!(publish(other.as_fd(), &file), Err(Errno::EXIST), "{how}");
            unlink(&file).unwrap();
        }
    }
}
