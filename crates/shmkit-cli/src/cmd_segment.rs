//! Segment subcommands: create, write, read, ls, stat, attach, rm, gc.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde_json::{json, Value};
use shmkit::segment::{self, Segment, SegmentInfo};

use crate::util::{self, human_age, human_size, parse_duration, parse_size, CliError, CliResult};

/// `shmkit create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Segment name: letters, digits, '.', '_', '-' (at most 200).
    pub name: String,
    /// Size of the data area: bytes, K/M/G (powers of 1000) or KiB/MiB/GiB
    /// (powers of 1024), e.g. 4096, 64MiB, 1.5GiB.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Permission bits, octal (default 600).
    #[arg(long, value_parser = parse_mode, default_value = "600")]
    pub mode: u32,
    /// Raw only: do not reserve the memory now. The segment may then be
    /// larger than the free space in /dev/shm, and any process touching a
    /// page when /dev/shm is full is killed by SIGBUS.
    #[arg(long)]
    pub sparse: bool,
    /// Raw only: back the segment with transparent huge pages. /dev/shm
    /// must be a size-limited tmpfs mounted with huge=always or
    /// huge=within_size; the size is rounded up to whole huge pages.
    #[arg(long, conflicts_with = "sparse")]
    pub huge: bool,
}

/// Parses an octal mode like `600` or `0640`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "invalid mode {s:?}: expected octal permission bits like 600 or 0640"
        )),
    }
}

/// `shmkit create NAME --size SIZE` (raw segment).
pub fn create_raw(a: &CreateArgs) -> CliResult {
    let size = a
        .size
        .ok_or_else(|| CliError::usage("create: --size is required for a raw segment"))?;
    let seg = Segment::builder(&a.name)
        .size(size)
        .mode(a.mode)
        .sparse(a.sparse)
        .huge_pages(a.huge)
        .create()?;
    seg.detach()?;
    Ok(())
}

/// `shmkit write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Segment name.
    pub name: String,
    /// Byte offset in the data area to write at.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Input file (default: standard input).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Safety switches shared by `read`, `write` and `attach`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Accept a segment owned by another user. /dev/shm is world-writable:
    /// without this, a segment someone else created under the expected
    /// name (to receive your data, or feed you theirs) is refused.
    #[arg(long)]
    pub allow_any_owner: bool,
    /// Read or write the bytes of a mutex, semaphore, event, ring or
    /// pub/sub segment too (writing corrupts the object for its users).
    #[arg(long)]
    pub force: bool,
}

/// Opens `name` for `read`/`write`: raw segments only unless `--force`,
/// own segments only unless `--allow-any-owner`.
fn open_for_copy(op: &str, name: &str, t: &TrustArgs, writable: bool) -> CliResult<Segment> {
    let mut b = Segment::builder(name);
    if !writable {
        b = b.read_only();
    }
    if t.allow_any_owner {
        b = b.allow_any_owner();
    }
    if !t.force {
        b = b.kind(segment::Kind::Raw);
    }
    b.open().map_err(|e| match e {
        segment::Error::WrongKind { found, .. } => CliError::fail(format!(
            "{op} {name:?}: segment holds a {found}, not raw bytes; use its own commands, or --force to {op} its bytes anyway{}",
            if writable { " (this corrupts it)" } else { "" }
        )),
        e => foreign_hint(op, name, e),
    })
}

/// The CLI wording of [`segment::Error::ForeignOwner`] (names the flag).
fn foreign_hint(op: &str, name: &str, e: segment::Error) -> CliError {
    match e {
        segment::Error::ForeignOwner { owner, euid, .. } => CliError::fail(format!(
            "{op} {name:?}: segment is owned by uid {owner}, not by you (uid {euid}); anyone may create names in /dev/shm, so it is refused: pass --allow-any-owner if you trust that user"
        )),
        e => e.into(),
    }
}

/// Copies FILE or stdin into the segment; nothing is written if it would
/// not fit. Uses `pwrite` on the file, not the mapping: a file truncated
/// by another process gives an error, not SIGBUS.
pub fn write(a: &WriteArgs) -> CliResult {
    let seg = open_for_copy("write", &a.name, &a.trust, true)?;
    let room = (seg.len() as u64).checked_sub(a.offset).ok_or_else(|| {
        CliError::fail(format!(
            "write {:?}: offset {} is past the end ({} bytes)",
            a.name,
            a.offset,
            seg.len()
        ))
    })?;
    let mut input: Box<dyn Read> = match &a.file {
        Some(p) => {
            Box::new(File::open(p).map_err(|e| CliError::fail(format!("{}: {e}", p.display())))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    // Read everything first (at most room + 1 bytes) so an oversized input
    // is refused before a single byte lands in the segment.
    let mut data = Vec::new();
    input
        .by_ref()
        .take(room + 1)
        .read_to_end(&mut data)
        .map_err(|e| CliError::fail(format!("write {:?}: reading input: {e}", a.name)))?;
    if data.len() as u64 > room {
        return Err(CliError::fail(format!(
            "write {:?}: input does not fit: more than {room} bytes from offset {} (segment data area is {} bytes); nothing written",
            a.name,
            a.offset,
            seg.len()
        )));
    }
    let mut progress = Progress::new("write", data.len() as u64);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        seg.pwrite_at(a.offset + (i << 20) as u64, chunk)?;
        progress.add(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

/// `shmkit read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Segment name.
    pub name: String,
    /// Byte offset in the data area to read from.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Number of bytes (default: up to the end of the data area).
    #[arg(long, value_parser = parse_size)]
    pub len: Option<u64>,
    /// Output file (default: standard output).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Copies bytes from the segment to FILE or stdout, with `pread` on the
/// file (a truncated file gives an error, not SIGBUS; a sparse segment's
/// holes read as zeros without taking memory).
pub fn read(a: &ReadArgs) -> CliResult {
    let seg = open_for_copy("read", &a.name, &a.trust, false)?;
    let size = seg.len() as u64;
    let len = match a.len {
        Some(l) => l,
        None => size.checked_sub(a.offset).ok_or_else(|| {
            CliError::fail(format!(
                "read {:?}: offset {} is past the end ({size} bytes)",
                a.name, a.offset
            ))
        })?,
    };
    if a.offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(CliError::fail(format!(
            "read {:?}: {len} bytes at offset {} do not fit in {size} bytes",
            a.name, a.offset
        )));
    }
    let mut out: Box<dyn Write> = match &a.file {
        Some(p) => {
            Box::new(File::create(p).map_err(|e| CliError::fail(format!("{}: {e}", p.display())))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut progress = Progress::new("read", len);
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        seg.pread_at(a.offset + done, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        done += n as u64;
        progress.add(n as u64);
    }
    out.flush()?;
    progress.finish();
    Ok(())
}

/// `shmkit ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Describes kind-specific state (mutex holder, ring depth...), if the
/// layer that owns the kind can; `None` for raw segments.
pub type Describe = fn(&SegmentInfo) -> Option<(String, Value)>;

/// Lists every shmkit segment.
pub fn ls(a: &LsArgs, describe: Describe) -> CliResult {
    let list = segment::list()?;
    let mut out = io::stdout().lock();
    if a.json {
        let arr: Vec<Value> = list.iter().map(|i| info_json(i, describe)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&arr).expect("json"))?;
        return Ok(());
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            if let Some(what) = i.not_a_segment {
                return vec![
                    i.name.clone(),
                    "not-a-segment".into(),
                    "-".into(),
                    format!("{:04o}", i.mode),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("{what} owned by uid {}", i.uid),
                ];
            }
            let (kind, size, lifetime, age) = match &i.header {
                Ok(h) => (
                    h.kind.as_str().to_owned(),
                    human_size(h.data_len),
                    if i.marked {
                        "marked-for-removal".to_owned()
                    } else {
                        h.lifetime.as_str().to_owned()
                    },
                    i.created_at()
                        .and_then(|t| now.duration_since(t).ok())
                        .map(human_age)
                        .unwrap_or_else(|| "-".into()),
                ),
                Err(_) => (
                    "corrupt".into(),
                    human_size(i.file_size),
                    "-".into(),
                    "-".into(),
                ),
            };
            let state = match &i.header {
                Ok(_) => describe(i).map(|(s, _)| s).unwrap_or_default(),
                Err(e) => e.clone(),
            };
            vec![
                i.name.clone(),
                kind,
                size,
                format!("{:04o}", i.mode),
                i.attached.to_string(),
                lifetime,
                age,
                state,
            ]
        })
        .collect();
    out.write_all(
        util::table(
            &[
                "NAME", "KIND", "SIZE", "MODE", "ATTACHED", "LIFETIME", "AGE", "STATE",
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn info_json(i: &SegmentInfo, describe: Describe) -> Value {
    let mut v = json!({
        "name": i.name,
        "mode": format!("{:04o}", i.mode),
        "uid": i.uid,
        "attached": i.attached,
        "pids": i.pids,
        "marked_for_removal": i.marked,
        "file_size": i.file_size,
    });
    if let Some(what) = i.not_a_segment {
        v["kind"] = json!("not-a-segment");
        v["size"] = Value::Null;
        v["lifetime"] = Value::Null;
        v["error"] = json!(format!("not a shmkit segment: {what}"));
        return v;
    }
    let foreign = foreign_holders(i);
    v["foreign_pids"] = json!(foreign.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    match &i.header {
        Ok(h) => {
            let created = i
                .created_at()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
            v["size"] = json!(h.data_len);
            v["kind"] = json!(h.kind.as_str());
            v["lifetime"] = json!(h.lifetime.as_str());
            v["creator_pid"] = json!(h.creator_pid);
            v["created_at"] = json!(created);
            v["format_version"] = json!(segment::header::VERSION);
            v["header_size"] = json!(segment::header::HEADER_SIZE);
            v["data_offset"] = json!(segment::header::HEADER_SIZE);
            v["creation_mode"] = json!(format!("{:04o}", h.mode));
            v["type"] = json!({
                "size": h.fingerprint.size,
                "align": h.fingerprint.align,
                "hash": format!("{:016x}", h.fingerprint.hash),
            });
            v["params"] = json!(h.params);
            if let Some((s, detail)) = describe(i) {
                v["state"] = json!(s);
                v["detail"] = detail;
            }
        }
        Err(e) => {
            v["size"] = Value::Null;
            v["kind"] = json!("corrupt");
            v["lifetime"] = Value::Null;
            v["error"] = json!(e);
        }
    }
    v
}

/// Attached pids whose process belongs to another uid than the segment's
/// owner, with that uid. Any process that can open the file, even
/// read-only, can take the locks that count as attachments, so these are
/// worth a look.
fn foreign_holders(i: &SegmentInfo) -> Vec<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    i.pids
        .iter()
        .filter_map(|&pid| {
            let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
            (uid != i.uid).then_some((pid, uid))
        })
        .collect()
}

/// `shmkit stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// Segment name.
    pub name: String,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Shows one segment's header, attachments and object state.
pub fn stat(a: &StatArgs, describe: Describe) -> CliResult {
    let i = segment::stat(&a.name)?;
    let v = info_json(&i, describe);
    let mut out = io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(());
    }
    let mut rows = vec![vec!["name".to_owned(), i.name.clone()]];
    match &i.header {
        Ok(h) => {
            let created = i.created_at().map(|t| {
                let age = SystemTime::now().duration_since(t).unwrap_or_default();
                let secs = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                format!("{secs} (unix time, {} ago)", human_age(age))
            });
            rows.extend([
                vec!["kind".into(), h.kind.to_string()],
                vec![
                    "size".into(),
                    format!("{} ({})", h.data_len, human_size(h.data_len)),
                ],
                vec!["lifetime".into(), h.lifetime.as_str().into()],
                vec![
                    "marked for removal".into(),
                    if i.marked { "yes" } else { "no" }.into(),
                ],
                vec![
                    "format version".into(),
                    segment::header::VERSION.to_string(),
                ],
                vec![
                    "header size".into(),
                    segment::header::HEADER_SIZE.to_string(),
                ],
                vec!["creator pid".into(), h.creator_pid.to_string()],
                vec!["created".into(), created.unwrap_or_default()],
                vec![
                    "stored type".into(),
                    format!(
                        "size {} align {} hash {:016x}",
                        h.fingerprint.size, h.fingerprint.align, h.fingerprint.hash
                    ),
                ],
            ]);
            if let Some((s, _)) = describe(&i) {
                rows.push(vec!["state".into(), s]);
            }
        }
        Err(e) => rows.push(vec!["error".into(), e.clone()]),
    }
    rows.extend([
        vec!["mode".into(), format!("{:04o}", i.mode)],
        vec!["owner uid".into(), i.uid.to_string()],
        vec!["file size".into(), i.file_size.to_string()],
        vec!["attached".into(), i.attached.to_string()],
        vec![
            "pids".into(),
            if i.pids.is_empty() {
                "-".to_owned()
            } else {
                let foreign = foreign_holders(&i);
                i.pids
                    .iter()
                    .map(|p| match foreign.iter().find(|(f, _)| f == p) {
                        Some((_, uid)) => format!("{p} (foreign: uid {uid})"),
                        None => p.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ],
    ]);
    for r in rows {
        writeln!(out, "{:<20}{}", format!("{}:", r[0]), r[1])?;
    }
    Ok(())
}

/// `shmkit attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Segment name.
    pub name: String,
    /// Detach after this long (e.g. 500ms, 5s, 2m); default: until killed
    /// (SIGINT/SIGTERM detach cleanly).
    #[arg(long = "for", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Accept a segment owned by another user (refused by default).
    #[arg(long)]
    pub allow_any_owner: bool,
}

/// Attaches and stays attached until the duration ends or a signal.
pub fn attach(a: &AttachArgs) -> CliResult {
    let mut b = Segment::builder(&a.name);
    if a.allow_any_owner {
        b = b.allow_any_owner();
    }
    let seg = b.open().map_err(|e| foreign_hint("attach", &a.name, e))?;
    crate::signals::install_stop_handler();
    eprintln!(
        "shmkit: attached to {:?} ({} bytes) as pid {}",
        a.name,
        seg.len(),
        std::process::id()
    );
    let deadline = a.duration.map(|d| Instant::now() + d);
    while !crate::signals::stop_requested() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seg.detach()?;
    Ok(())
}

/// `shmkit rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Segment names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Deferred removal: delete when the last attached process detaches
    /// (at once if none is); new attaches are refused meanwhile.
    #[arg(long)]
    pub when_unused: bool,
}

/// Removes each name; reports every failure, fails if any failed.
pub fn rm(a: &RmArgs) -> CliResult {
    let mut failed = 0;
    for name in &a.names {
        let r = if a.when_unused {
            segment::remove_when_unused(name).map(drop)
        } else {
            segment::remove(name)
        };
        if let Err(e) = r {
            eprintln!("shmkit: {e}");
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        // Each failure was reported on its own line already.
        _ => Err(CliError::silent(1)),
    }
}

/// `shmkit gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Removes due segments that nobody alive is attached to.
pub fn gc(a: &GcArgs) -> CliResult {
    let done = segment::gc_report(a.dry_run)?;
    let mut out = io::stdout().lock();
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for c in done.collected {
        writeln!(out, "{verb} {} ({})", c.name, c.reason)?;
    }
    for (name, what) in done.not_segments {
        writeln!(out, "skipped {name} (not-a-segment: {what})")?;
    }
    Ok(())
}

/// A progress bar on stderr, only for transfers above 4 MiB and only when
/// stderr is a terminal.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    enabled: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    /// Starts a bar for `total` bytes.
    pub fn new(what: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            enabled: total > 4 << 20 && io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }

    /// Records `n` more bytes.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(100) {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let frac = self.done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{} [{}{}] {:>3.0}% {} / {} ({}/s)  ",
            self.what,
            "=".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            human_size(self.done),
            human_size(self.total),
            human_size(rate as u64)
        );
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}
