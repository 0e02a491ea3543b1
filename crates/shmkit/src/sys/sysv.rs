//! System V shared memory calls: `shmget`, `shmat`, `shmdt`, `shmctl`,
//! `ftok`, and the `/proc/sysvipc/shm` table. Thin wrappers returning the
//! errno; [`crate::sysv`] builds the safe API on top.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::io::Errno;

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// `shmget(key, size, flags)`: the segment id.
pub fn shmget(key: i32, size: usize, flags: i32) -> Result<i32, Errno> {
    // SAFETY: plain system call with integer arguments.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id < 0 {
        Err(last_errno())
    } else {
        Ok(id)
    }
}

/// What `IPC_STAT` reports about a segment (the fields shmkit uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmStat {
    /// The key (`IPC_PRIVATE`, 0, once marked for removal).
    pub key: i32,
    /// Size in bytes (`shm_segsz`).
    pub size: u64,
    /// Permission bits plus `SHM_DEST` (0o1000) and `SHM_LOCKED` (0o2000).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Creator uid.
    pub cuid: u32,
    /// Creator pid.
    pub cpid: i32,
    /// Pid of the last `shmat`/`shmdt`.
    pub lpid: i32,
    /// Number of current attaches.
    pub nattch: u64,
    /// Last attach time (Unix seconds, 0 if never).
    pub atime: i64,
    /// Last detach time.
    pub dtime: i64,
    /// Last change time.
    pub ctime: i64,
}

/// `shmctl(id, IPC_STAT)`.
pub fn stat(id: i32) -> Result<ShmStat, Errno> {
    // SAFETY: `shmid_ds` is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable `shmid_ds`.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(last_errno());
    }
    Ok(ShmStat {
        key: ds.shm_perm.__key,
        size: ds.shm_segsz as u64,
        mode: u32::from(ds.shm_perm.mode),
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        cuid: ds.shm_perm.cuid,
        cpid: ds.shm_cpid,
        lpid: ds.shm_lpid,
        nattch: ds.shm_nattch as u64,
        atime: ds.shm_atime,
        dtime: ds.shm_dtime,
        ctime: ds.shm_ctime,
    })
}

/// `shmctl(id, IPC_RMID)`: the kernel destroys the segment after its last
/// detach; until then its key reads as `IPC_PRIVATE`.
pub fn rmid(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

/// `shmat(id, NULL, SHM_RDONLY if !writable)`: the address chosen by the
/// kernel.
pub fn shmat(id: i32, writable: bool) -> Result<*mut u8, Errno> {
    let flags = if writable { 0 } else { libc::SHM_RDONLY };
    // SAFETY: a NULL address lets the kernel choose a free range; nothing
    // of ours is overwritten.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        Err(last_errno())
    } else {
        Ok(p.cast())
    }
}

/// `shmdt(addr)`.
///
/// # Safety
///
/// `addr` was returned by [`shmat`] and is not used after this call.
pub unsafe fn shmdt(addr: *mut u8) -> Result<(), Errno> {
    // SAFETY: by the contract above.
    if unsafe { libc::shmdt(addr.cast()) } < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

/// `ftok(path, proj)`: the classic key derivation (inode, device and the
/// low 8 bits of `proj`).
pub fn ftok(path: &Path, proj: u8) -> Result<i32, Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let k = unsafe { libc::ftok(c.as_ptr(), i32::from(proj)) };
    if k == -1 {
        Err(last_errno())
    } else {
        Ok(k)
    }
}

/// One row of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcRow {
    /// Segment id.
    pub id: i32,
    /// The [`ShmStat`] fields, as the kernel prints them.
    pub stat: ShmStat,
}

/// Reads `/proc/sysvipc/shm` (this IPC namespace's segments). Rows that do
/// not parse are skipped.
pub fn proc_table() -> io::Result<Vec<ProcRow>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm")?;
    Ok(parse_proc(&text))
}

/// Parses the text of `/proc/sysvipc/shm`.
pub fn parse_proc(text: &str) -> Vec<ProcRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let idx = [
        "key", "shmid", "perms", "size", "cpid", "lpid", "nattch", "uid", "gid", "cuid", "atime",
        "dtime", "ctime",
    ]
    .map(col);
    if idx.iter().any(Option::is_none) {
        return Vec::new();
    }
    let idx = idx.map(|i| i.unwrap_or(0));
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| f.get(idx[i]).copied();
            let int = |i: usize| get(i)?.parse::<i64>().ok();
            Some(ProcRow {
                id: i32::try_from(int(1)?).ok()?,
                stat: ShmStat {
                    key: i32::try_from(int(0)?).ok()?,
                    // perms is printed in octal.
                    mode: u32::from_str_radix(get(2)?, 8).ok()?,
                    size: get(3)?.parse().ok()?,
                    cpid: i32::try_from(int(4)?).ok()?,
                    lpid: i32::try_from(int(5)?).ok()?,
                    nattch: get(6)?.parse().ok()?,
                    uid: get(7)?.parse().ok()?,
                    gid: get(8)?.parse().ok()?,
                    cuid: get(9)?.parse().ok()?,
                    atime: int(10)?,
                    dtime: int(11)?,
                    ctime: int(12)?,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_table() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                    1234567890          5  1600                  4096   100   200      1  1000  1000  1000  1000 1700000000 1700000001 1700000002                  4096                     0\n\
                    garbage line\n";
        let rows = parse_proc(text);
        assert_eq!(rows.len(), 1);
        let r = rows[0];
        assert_eq!(r.id, 5);
        assert_eq!(r.stat.key, 1234567890);
        assert_eq!(r.stat.mode, 0o1600);
        assert_eq!(r.stat.size, 4096);
        assert_eq!((r.stat.cpid, r.stat.lpid, r.stat.nattch), (100, 200, 1));
        assert_eq!(r.stat.dtime, 1700000001);
        assert!(parse_proc("").is_empty());
        assert!(parse_proc("key nope\n1 2\n").is_empty());
    }
}
