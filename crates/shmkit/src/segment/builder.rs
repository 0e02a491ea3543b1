//! Creating and opening segments: the builder and the two protocols
//! (publish an unnamed, complete file; attach under a shared `flock`).

use super::*;

/// What an attach attempt found.
enum Attach {
    /// Attached (our shared lock is held) and mapped.
    Mapped(Mapping),
    /// Someone holds the exclusive lock: retry shortly.
    Busy,
    /// Deleted between our `openat` and our lock: retry.
    Unlinked,
}

type InitFn<'a> = Box<dyn FnOnce(&mut [u8]) -> Result<()> + 'a>;

/// Options for creating or opening a segment. Start with
/// [`Segment::builder`], finish with [`create`](SegmentBuilder::create),
/// [`open`](SegmentBuilder::open) or
/// [`open_or_create`](SegmentBuilder::open_or_create).
pub struct SegmentBuilder<'a> {
    pub(super) name: String,
    pub(super) size: Option<u64>,
    pub(super) mode: u32,
    pub(super) lifetime: Lifetime,
    pub(super) kind: Option<Kind>,
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) params: [u64; 8],
    pub(super) writable: bool,
    pub(super) init: Option<InitFn<'a>>,
    pub(super) open_timeout: Duration,
    pub(super) any_owner: bool,
    pub(super) sparse: bool,
    pub(super) huge: bool,
}

impl std::fmt::Debug for SegmentBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("lifetime", &self.lifetime)
            .field("kind", &self.kind)
            .field("sparse", &self.sparse)
            .field("huge", &self.huge)
            .finish_non_exhaustive()
    }
}

impl<'a> SegmentBuilder<'a> {
    /// Size of the data area in bytes (required to create; > 0).
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Permission bits for a new segment (default `0o600`). Applied
    /// exactly: the umask does not trim them.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// When a new segment is deleted (default [`Lifetime::Persistent`]).
    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The kind to create, and to require when opening. Without it,
    /// `create` makes [`Kind::Raw`] and `open` accepts any kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// The stored type to record, and to require when opening.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Kind-specific parameters recorded in the header (creation only).
    pub fn params(mut self, params: [u64; 8]) -> Self {
        self.params = params;
        self
    }

    /// Attach read-only (`O_RDONLY`, `PROT_READ`). Writes then fail with
    /// [`Error::PermissionDenied`]. Only for `open`.
    pub fn read_only(mut self) -> Self {
        self.writable = false;
        self
    }

    /// Accept a segment owned by another user. By default `open` (and
    /// `open_or_create`) refuse one with [`Error::ForeignOwner`]: `/dev/shm`
    /// is world-writable, so another user could create the name first, and
    /// whoever can write a segment can corrupt the objects in it. Pass this
    /// only when you trust that user (for example, processes of several
    /// users sharing a group-writable segment). Raw bytes are not safe
    /// either: the owner of a segment you write into reads your data, and
    /// the owner of one you read from chose what you read.
    pub fn allow_any_owner(mut self) -> Self {
        self.any_owner = true;
        self
    }

    /// Do not reserve the memory at creation (default `false`).
    ///
    /// By default `create` allocates every page of a new segment with
    /// `fallocate` before giving it its name, so a full `/dev/shm` fails
    /// at once with [`Error::NoSpace`]. A sparse segment takes memory only
    /// when a page is first touched, which lets one create segments larger
    /// than the free space; but then **any process touching a page when
    /// `/dev/shm` is full is killed by SIGBUS**, in the middle of a write,
    /// a lock or a send. Use it only when you control the space.
    pub fn sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    /// Back a new segment with transparent huge pages (default `false`).
    ///
    /// The shm directory must be a tmpfs that gives new files huge pages
    /// (mounted with `huge=always` or `huge=within_size`, or
    /// `shmem_enabled` set to `force`) and has a size limit; otherwise
    /// `create` fails with [`Error::InvalidArgument`] saying why, before
    /// creating anything. The data area is rounded up so that header and
    /// data fill whole huge pages ([`Segment::len`] reports the rounded
    /// size), and the memory is reserved as always, so a full mount is
    /// [`Error::NoSpace`] at creation, never SIGBUS later (hence not with
    /// [`sparse`](SegmentBuilder::sparse)). Fewer page faults and TLB
    /// misses: for 16 MiB frames, see BENCHMARKS.md "Huge pages". Openers
    /// need nothing special.
    pub fn huge_pages(mut self, huge: bool) -> Self {
        self.huge = huge;
        self
    }

    /// The data size a create with these options makes: `size`, or with
    /// [`huge_pages`](SegmentBuilder::huge_pages), `size` rounded up so
    /// that the file is a whole number of huge pages.
    fn data_len(&self, op: &'static str, size: u64) -> Result<u64> {
        if !self.huge {
            return Ok(size);
        }
        let refuse = |reason: String| Error::InvalidArgument {
            op,
            name: self.name.clone(),
            reason,
        };
        if self.sparse {
            return Err(refuse(
                "huge pages need the reservation: not with sparse".into(),
            ));
        }
        let page = match shm::huge_support().map_err(|e| Error::from_errno(op, &self.name, e))? {
            shm::HugeSupport::Yes { page_size } => page_size.max(header::HEADER_SIZE),
            shm::HugeSupport::No(why) => {
                return Err(refuse(format!("no huge pages for segments here: {why}")))
            }
        };
        header::HEADER_SIZE
            .checked_add(size)
            .and_then(|t| t.checked_next_multiple_of(page))
            .map(|t| t - header::HEADER_SIZE)
            .ok_or_else(|| refuse(format!("size {size} is too large")))
    }

    /// How long `open` waits for a segment that another process holds
    /// exclusively while deciding whether to delete it (default 2 s).
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Runs `init` on the zero-filled data area of a new segment before any
    /// other process can see it. Objects that live in segments (mutexes,
    /// rings) are set up here, so they are never seen half-initialised.
    pub fn init(mut self, init: impl FnOnce(&mut [u8]) -> Result<()> + 'a) -> Self {
        self.init = Some(Box::new(init));
        self
    }

    /// Creates a new segment; [`Error::AlreadyExists`] if the name is taken
    /// ([`Error::NotASegment`] if it is taken by something that is not a
    /// regular file), [`Error::NoSpace`] if `/dev/shm` has no room for it.
    pub fn create(self) -> Result<Segment> {
        validate_name("create", &self.name)?;
        match self.create_inner("create")? {
            Ok(seg) => Ok(seg),
            Err(builder) => {
                if let Ok(info) = shm::lstat(file_name(&builder.name).as_str()) {
                    if let Some(e) = Error::not_regular("create", &builder.name, info.file_type) {
                        return Err(e);
                    }
                }
                Err(Error::AlreadyExists {
                    op: "create",
                    name: builder.name,
                })
            }
        }
    }

    /// Opens an existing segment; [`Error::NotFound`] if there is none,
    /// [`Error::NotASegment`] if the name is a FIFO, directory, socket,
    /// symbolic link or device (never blocking on it).
    pub fn open(self) -> Result<Segment> {
        validate_name("open", &self.name)?;
        self.open_inner("open")
    }

    /// Opens the segment, creating it if it does not exist. Race-free: when
    /// many processes call this at once, exactly one creates (see
    /// [`Segment::created`]) and all get the same, fully initialised
    /// segment. An existing segment must match `size`, kind and type.
    pub fn open_or_create(self) -> Result<Segment> {
        const OP: &str = "open_or_create";
        validate_name(OP, &self.name)?;
        let mut this = self;
        // A segment removed between our failed create and our open makes
        // us loop; each turn is progress by someone else, so bound it.
        for _ in 0..100 {
            this = match this.create_inner(OP)? {
                Ok(seg) => return Ok(seg),
                Err(builder) => builder,
            };
            match this.open_inner(OP) {
                Err(Error::NotFound { .. }) => continue,
                Ok(seg) => {
                    let want = match this.size {
                        Some(n) => this.data_len(OP, n)?,
                        None => seg.len() as u64,
                    };
                    if want != seg.len() as u64 {
                        return Err(Error::InvalidArgument {
                            op: OP,
                            name: this.name.clone(),
                            reason: format!(
                                "exists with a data size of {} bytes, not {want}",
                                seg.len()
                            ),
                        });
                    }
                    return Ok(seg);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Busy {
            op: OP,
            name: this.name,
        })
    }

    /// `Ok(Err(self))` when the name is taken, so the caller can open it.
    fn create_inner(mut self, op: &'static str) -> Result<std::result::Result<Segment, Self>> {
        let name = self.name.clone();
        let err = |e| Error::from_errno(op, &name, e);
        let data_len = match self.size {
            Some(0) | None => {
                return Err(Error::InvalidArgument {
                    op,
                    name,
                    reason: "a new segment needs a size greater than zero".into(),
                })
            }
            Some(n) => self.data_len(op, n)?,
        };
        if self.mode & !0o777 != 0 {
            return Err(Error::InvalidArgument {
                op,
                name,
                reason: format!("mode {:o} has bits outside 0o777", self.mode),
            });
        }
        let total = header::HEADER_SIZE
            .checked_add(data_len)
            .filter(|t| usize::try_from(*t).is_ok() && *t <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidArgument {
                op,
                name: name.clone(),
                reason: format!("size {data_len} is too large"),
            })?;
        let no_space = |space: Option<shm::Space>| Error::NoSpace {
            op,
            name: name.clone(),
            asked: Some(total),
            free: space.map(|s| s.free),
            total: space.map(|s| s.total),
        };
        let created_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let header = Header {
            kind: self.kind.unwrap_or(Kind::Raw),
            lifetime: self.lifetime,
            mode: self.mode,
            creator_pid: process::cached_pid(),
            created_at_ns,
            data_len,
            fingerprint: self.fingerprint.unwrap_or(Fingerprint::BYTES),
            params: self.params,
        };
        // Written with the reservation (one `pwritev` of header and zeros
        // for a small file, else `fallocate` then `pwrite`), not through
        // the mapping: a store there is a page fault, and the page table
        // entry it creates makes `munmap` dearer; the header page is
        // otherwise never touched in a life cycle (`open` and `detach`
        // read it with `pread` too). The file is unnamed: nobody else can
        // see it yet.
        let (fd, info) = shm::create_unnamed_with(self.mode, total, self.sparse, &header.encode())
            .map_err(|e| match e {
                rustix::io::Errno::NOSPC => no_space(shm::space().ok()),
                rustix::io::Errno::FBIG => Error::FileSizeLimit {
                    op,
                    name: name.clone(),
                    asked: Some(total),
                    limit: shm::file_size_limit(),
                },
                e => err(e),
            })?;
        let map = Mapping::new(fd.as_fd(), total as usize, true).map_err(|e| match e {
            rustix::io::Errno::NOMEM => Error::InvalidArgument {
                op,
                name: name.clone(),
                reason: format!(
                    "{} does not fit in this process's address space (mmap refused it)",
                    error::human(total)
                ),
            },
            e => err(e),
        })?;
        if let Some(init) = self.init.take() {
            // SAFETY:
            // - `HEADER_SIZE + data_len == total` bytes are mapped, so the
            //   data area is in bounds;
            // - nobody else can reach the unnamed file, and this is the only
            //   reference, dropped before the segment is published.
            let data = unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_ptr().add(header::HEADER_SIZE as usize),
                    data_len as usize,
                )
            };
            init(data)?;
        }
        // Attached before it has a name: there is no instant at which the
        // published segment has no holder and could be collected.
        if !flock::try_shared(fd.as_fd()).map_err(err)? {
            return Err(Error::corrupt(op, &name, "fresh unnamed file was locked"));
        }
        let file = FileName::new(&name);
        let file = file.as_c_str();
        // linkat is a full barrier for our stores: any process that finds
        // the name (a later syscall) sees the header and object written.
        match shm::publish(fd.as_fd(), file) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                // A stale, due segment may hold the name: collect it and retry once.
                if registry::collect_if_due(&name).unwrap_or(false) {
                    match shm::publish(fd.as_fd(), file) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::EXIST) => return Ok(Err(self)),
                        Err(e) => return Err(err(e)),
                    }
                } else {
                    return Ok(Err(self));
                }
            }
            Err(e) => return Err(err(e)),
        }
        Ok(Ok(Segment {
            name,
            fd,
            map,
            id: info.id,
            header,
            writable: true,
            created: true,
            detached: false,
            owner_pid: process::cached_pid(),
        }))
    }

    fn open_inner(&self, op: &'static str) -> Result<Segment> {
        let name = &self.name;
        // Started at the first retry: the common open never reads the clock.
        let mut deadline = None;
        let mut pause = Duration::from_micros(50);
        let mut busy = |what: Error| -> Result<()> {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.open_timeout);
            if Instant::now() >= deadline {
                return Err(what);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
            Ok(())
        };
        loop {
            let (fd, info) = open_file(op, name, self.writable)?;
            let euid = rustix::process::geteuid().as_raw();
            if !self.any_owner && info.uid != euid {
                return Err(Error::ForeignOwner {
                    op,
                    name: name.clone(),
                    owner: info.uid,
                    euid,
                });
            }
            // Everything before the flags word is immutable once the name
            // exists, so the header may be read before we hold a lock. The
            // flags word comes with it (one `pread`), also before the lock:
            // see `attach_persistent` for why that is enough.
            let (header, flags) = read_header(op, name, &fd, info.size)?;
            // Every refusal that the header decides comes before the lock
            // and the mapping: an opener that took the shared lock and then
            // gave up would, for a moment, make a last detacher believe it
            // is not the last (and leave the deletion to nobody).
            if let Some(kind) = self.kind {
                if kind != header.kind {
                    return Err(Error::WrongKind {
                        op,
                        name: name.clone(),
                        expected: kind,
                        found: header.kind,
                    });
                }
            }
            if let Some(fp) = self.fingerprint {
                if fp != header.fingerprint {
                    return Err(Error::TypeMismatch {
                        op,
                        name: name.clone(),
                        expected: fp.to_string(),
                        found: header.fingerprint.to_string(),
                    });
                }
            }
            let marked = flags & header::FLAG_MARKED != 0;
            // Mapped before the lock for the same reason (an `mmap` failure
            // must not happen under it). The size was validated against
            // the header, and nothing is touched: no page fault.
            let map = Mapping::new(fd.as_fd(), info.size as usize, self.writable)
                .map_err(|e| Error::from_errno(op, name, e))?;
            let attached = if header.lifetime == Lifetime::Persistent {
                self.attach_persistent(op, &fd, &info, marked, map)?
            } else {
                self.attach_until_last_detach(op, &fd, &info, marked, map)?
            };
            let map = match attached {
                Attach::Mapped(map) => map,
                Attach::Busy => {
                    busy(Error::Busy {
                        op,
                        name: name.clone(),
                    })?;
                    continue;
                }
                Attach::Unlinked => {
                    busy(Error::NotFound {
                        op,
                        name: name.clone(),
                    })?;
                    continue;
                }
            };
            return Ok(Segment {
                name: name.clone(),
                fd,
                map,
                id: info.id,
                header,
                writable: self.writable,
                created: false,
                detached: false,
                owner_pid: process::cached_pid(),
            });
        }
    }

    /// Attaches to a persistent segment: one shared `flock`, no exclusive
    /// probe (only a *marked* persistent segment can be due). No `nlink`
    /// re-check either: a `remove` that unlinks the name after our
    /// `openat` is ordered after this open (as `shm_unlink` after
    /// `shm_open`), and the handle stays valid.
    ///
    /// `marked` was read (`pread`) before our lock. A marker racing with
    /// us stores its mark and then tries the exclusive lock; if we read
    /// the flags before that store, this open is ordered before the mark
    /// (as if it came first), and nothing is lost: our attachment is then
    /// one of those the marker's failed attempt leaves the deletion to,
    /// and our own detach, which reads the mark *after* its exclusive
    /// upgrade, sees it and collects.
    fn attach_persistent(
        &self,
        op: &'static str,
        fd: &OwnedFd,
        info: &shm::FileInfo,
        marked: bool,
        map: Mapping,
    ) -> Result<Attach> {
        let name = &self.name;
        let err = |e| Error::from_errno(op, name, e);
        if marked {
            drop(map);
            // Rare: if nobody is attached it is garbage; collect it.
            if flock::try_exclusive(fd.as_fd()).map_err(err)? {
                shm::unlink_if_same(&file_name(name), info.id).map_err(err)?;
                return Err(Error::NotFound {
                    op,
                    name: name.clone(),
                });
            }
            return Err(Error::MarkedForRemoval {
                op,
                name: name.clone(),
            });
        }
        if !flock::try_shared(fd.as_fd()).map_err(err)? {
            // An exclusive holder for microseconds: the last detacher
            // (it holds its upgraded lock until its descriptor and mapping
            // are gone), `gc`, `ls`, or a collector.
            return Ok(Attach::Busy);
        }
        Ok(Attach::Mapped(map))
    }

    /// Attaches to an until-last-detach segment: exclusive probe first, so
    /// that one whose holders all died is collected here, then shared; and
    /// under the lock, make sure a last detacher did not delete it between
    /// our `openat` and our lock (`nlink == 0`), or we would be attached to
    /// a segment nobody else can find. `marked` as in `attach_persistent`.
    fn attach_until_last_detach(
        &self,
        op: &'static str,
        fd: &OwnedFd,
        info: &shm::FileInfo,
        marked: bool,
        map: Mapping,
    ) -> Result<Attach> {
        let name = &self.name;
        let err = |e| Error::from_errno(op, name, e);
        let alone = flock::try_exclusive(fd.as_fd()).map_err(err)?;
        if !alone && marked {
            // Refused without taking the shared lock (see `open_inner`);
            // the failed probe left us holding nothing.
            return Err(Error::MarkedForRemoval {
                op,
                name: name.clone(),
            });
        }
        if !alone && !flock::try_shared(fd.as_fd()).map_err(err)? {
            // Someone holds it exclusively: a detacher deleting it, `gc`,
            // or another opener about to downgrade. Brief; wait.
            return Ok(Attach::Busy);
        }
        if shm::stat_fd(fd.as_fd()).map_err(err)?.nlink == 0 {
            return Ok(Attach::Unlinked);
        }
        if alone {
            // Nobody alive is attached to a segment that is due: it is
            // garbage. Remove it and report it absent.
            drop(map);
            shm::unlink_if_same(&file_name(name), info.id).map_err(err)?;
            return Err(Error::NotFound {
                op,
                name: name.clone(),
            });
        }
        Ok(Attach::Mapped(map))
    }
}

/// Opens the file of segment `name` without blocking or following links,
/// and refuses anything that is not a regular file with
/// [`Error::NotASegment`]: `/dev/shm` is world-writable, so the name may be
/// a FIFO, a directory or a socket made by another user.
pub(crate) fn open_file(
    op: &'static str,
    name: &str,
    writable: bool,
) -> Result<(OwnedFd, shm::FileInfo)> {
    let err = |e| Error::from_errno(op, name, e);
    let file = FileName::new(name);
    let file = file.as_c_str();
    let fd = shm::open(file, writable).map_err(|e| {
        // ELOOP, ENXIO, EISDIR...: say exactly what the name is.
        match shm::lstat(file) {
            Ok(info) if e != rustix::io::Errno::NOENT => {
                Error::not_regular(op, name, info.file_type).unwrap_or_else(|| err(e))
            }
            _ => err(e),
        }
    })?;
    let info = shm::stat_fd(fd.as_fd()).map_err(err)?;
    match Error::not_regular(op, name, info.file_type) {
        Some(e) => Err(e),
        None => Ok((fd, info)),
    }
}

/// Reads and validates the header with `pread`: a short or hostile file
/// gives an error, never a SIGBUS.
pub(crate) fn read_header(
    op: &'static str,
    name: &str,
    fd: &OwnedFd,
    size: u64,
) -> Result<(Header, u32)> {
    let mut buf = [0u8; header::READ_LEN];
    let n = shm::read_at(fd.as_fd(), &mut buf, 0).map_err(|e| Error::from_errno(op, name, e))?;
    Header::decode(op, name, &buf[..n], size)
}
