//! `shmkit sysv ...`: System V shared memory (`ipcs -m`, `ipcrm`, and
//! reading and writing the segments of legacy programs).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shmkit::sysv::{self, SysvInfo, SysvSegment};

use crate::cmd_segment::{parse_mode, Progress};
use crate::util::{self, human_size, parse_size, CliError, CliResult};

/// `shmkit sysv`.
#[derive(Debug, Args)]
pub struct SysvArgs {
    #[command(subcommand)]
    cmd: SysvCmd,
}

#[derive(Debug, Subcommand)]
enum SysvCmd {
    /// List System V segments (from /proc/sysvipc/shm), like `ipcs -m`.
    Ls(LsArgs),
    /// Show one segment.
    Stat(StatArgs),
    /// Copy a segment's bytes to FILE (or stdout).
    Read(ReadArgs),
    /// Write FILE (or stdin) into a segment; nothing is written if it does not fit.
    Write(WriteArgs),
    /// Mark a segment for removal (IPC_RMID): freed at its last detach.
    Rm(Target),
    /// Create a segment (IPC_CREAT | IPC_EXCL).
    Create(CreateArgs),
}

/// Which segment: a key (`0x1234abcd` or decimal), `--id`, or `--key-from`.
#[derive(Debug, Args)]
pub struct Target {
    /// The key: 0x-prefixed hex (as `ipcs` prints it) or decimal. Omitted
    /// with --id or --key-from.
    key: Option<String>,
    /// The segment id (shmid), e.g. for a segment whose key is 0.
    #[arg(long, conflicts_with = "key_from")]
    id: Option<i32>,
    /// Derive the key with ftok(PATH, PROJ); PROJ is a number or a character.
    #[arg(long, value_name = "PATH:PROJ")]
    key_from: Option<String>,
}

/// Parses `PATH:PROJ` and calls `ftok`.
fn key_from(spec: &str) -> CliResult<i32> {
    let (path, proj) = spec.rsplit_once(':').ok_or_else(|| {
        CliError::usage(format!(
            "--key-from {spec:?}: expected PATH:PROJ, e.g. /etc/myapp.conf:65 or /etc/myapp.conf:A"
        ))
    })?;
    let proj = match proj.parse::<u32>() {
        Ok(n) if (1..=255).contains(&n) => n as u8,
        Ok(_) => {
            return Err(CliError::usage(format!(
                "--key-from {spec:?}: PROJ must be 1 to 255"
            )))
        }
        Err(_) => match proj.as_bytes() {
            [c] if *c != 0 => *c,
            _ => {
                return Err(CliError::usage(format!(
                    "--key-from {spec:?}: PROJ is a number 1-255 or one character"
                )))
            }
        },
    };
    Ok(sysv::ftok(path, proj)?)
}

/// Resolves the target to a segment id. `file` is the optional FILE
/// positional of `read`/`write`: with --id or --key-from the first
/// positional is the FILE (`sysv read --id 5 out.bin`), as in
/// `shmkit read NAME FILE`.
fn resolve(t: &Target, file_ok: bool, file: Option<&PathBuf>) -> CliResult<(i32, Option<PathBuf>)> {
    let named = t.id.is_some() || t.key_from.is_some();
    let (key, file) = match (&t.key, named) {
        (Some(k), false) => (Some(k.as_str()), file.cloned()),
        (Some(k), true) if file.is_none() && file_ok => (None, Some(PathBuf::from(k))),
        (Some(k), true) => {
            return Err(CliError::usage(format!(
                "unexpected argument {k:?}: the segment is already given by --id/--key-from"
            )))
        }
        (None, _) => (None, file.cloned()),
    };
    let id = match (t.id, &t.key_from, key) {
        (Some(id), None, None) => id,
        (None, Some(spec), None) => sysv::id_of(key_from(spec)?)?,
        (None, None, Some(k)) => sysv::id_of(sysv::parse_key(k).map_err(CliError::usage)?)?,
        (None, None, None) => return Err(CliError::usage("a KEY, --id or --key-from is required")),
        _ => return Err(CliError::usage("give only one of KEY, --id and --key-from")),
    };
    Ok((id, file))
}

fn target_id(t: &Target) -> CliResult<i32> {
    resolve(t, false, None).map(|(id, _)| id)
}

/// `sysv ls`.
#[derive(Debug, Args)]
struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// `sysv stat`.
#[derive(Debug, Args)]
struct StatArgs {
    #[command(flatten)]
    target: Target,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `sysv read`.
#[derive(Debug, Args)]
struct ReadArgs {
    #[command(flatten)]
    target: Target,
    /// Byte offset to read from.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Number of bytes (default: up to the end).
    #[arg(long, value_parser = parse_size)]
    len: Option<u64>,
    /// Output file (default: standard output).
    file: Option<PathBuf>,
}

/// `sysv write`.
#[derive(Debug, Args)]
struct WriteArgs {
    #[command(flatten)]
    target: Target,
    /// Byte offset to write at.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Input file (default: standard input).
    file: Option<PathBuf>,
}

/// `sysv create`.
#[derive(Debug, Args)]
struct CreateArgs {
    /// The key: 0x-prefixed hex or decimal (0 = IPC_PRIVATE).
    #[arg(value_parser = sysv::parse_key, required_unless_present = "key_from", conflicts_with = "key_from")]
    key: Option<i32>,
    /// Derive the key with ftok(PATH, PROJ).
    #[arg(long, value_name = "PATH:PROJ")]
    key_from: Option<String>,
    /// Size in bytes (or with K/M/G).
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Permission bits, octal (default 600).
    #[arg(long, value_parser = parse_mode, default_value = "600")]
    mode: u32,
}

/// Runs a `shmkit sysv` subcommand.
pub fn run(a: &SysvArgs) -> CliResult {
    match &a.cmd {
        SysvCmd::Ls(a) => ls(a),
        SysvCmd::Stat(a) => stat(a),
        SysvCmd::Read(a) => read(a),
        SysvCmd::Write(a) => write(a),
        SysvCmd::Rm(t) => {
            sysv::remove_id(target_id(t)?)?;
            Ok(())
        }
        SysvCmd::Create(a) => create(a),
    }
}

fn secs(t: Option<SystemTime>) -> Value {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => json!(d.as_secs()),
        None => Value::Null,
    }
}

/// User name of `uid` from /etc/passwd, or the number.
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| uid.to_string())
}

fn info_json(i: &SysvInfo) -> Value {
    json!({
        "key": sysv::key_hex(i.key),
        "shmid": i.id,
        "owner": user_name(i.uid),
        "uid": i.uid,
        "gid": i.gid,
        "mode": format!("{:04o}", i.mode),
        "size": i.size,
        "nattch": i.nattch,
        "cpid": i.cpid,
        "lpid": i.lpid,
        "atime": secs(i.atime),
        "dtime": secs(i.dtime),
        "ctime": secs(i.ctime),
        "dest": i.dest,
        "locked": i.locked,
    })
}

fn time_str(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{} ago", util::human_age(d)),
        None => "-".into(),
    }
}

fn ls(a: &LsArgs) -> CliResult {
    let list = sysv::list()?;
    let mut out = io::stdout().lock();
    if a.json {
        let arr: Vec<Value> = list.iter().map(info_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&arr).expect("json"))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                sysv::key_hex(i.key),
                i.id.to_string(),
                user_name(i.uid),
                format!("{:04o}", i.mode),
                i.size.to_string(),
                i.nattch.to_string(),
                i.cpid.to_string(),
                i.lpid.to_string(),
                time_str(i.atime),
                time_str(i.ctime),
                if i.dest { "dest".into() } else { String::new() },
            ]
        })
        .collect();
    out.write_all(
        util::table(
            &[
                "KEY", "SHMID", "OWNER", "MODE", "BYTES", "NATTCH", "CPID", "LPID", "ATTACHED",
                "CHANGED", "STATUS",
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn stat(a: &StatArgs) -> CliResult {
    let i = sysv::stat_id(target_id(&a.target)?)?;
    let v = info_json(&i);
    let mut out = io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("json"))?;
        return Ok(());
    }
    let rows = vec![
        vec!["key".into(), sysv::key_hex(i.key)],
        vec!["shmid".into(), i.id.to_string()],
        vec![
            "owner".into(),
            format!("{} (uid {})", user_name(i.uid), i.uid),
        ],
        vec!["mode".into(), format!("{:04o}", i.mode)],
        vec![
            "size".into(),
            format!("{} ({})", i.size, human_size(i.size)),
        ],
        vec!["nattch".into(), i.nattch.to_string()],
        vec!["creator pid".into(), i.cpid.to_string()],
        vec!["last pid".into(), i.lpid.to_string()],
        vec!["attached".into(), time_str(i.atime)],
        vec!["detached".into(), time_str(i.dtime)],
        vec!["changed".into(), time_str(i.ctime)],
        vec![
            "status".into(),
            if i.dest {
                "marked for removal (freed at last detach)".into()
            } else {
                "-".into()
            },
        ],
    ];
    for r in rows {
        writeln!(out, "{:<12} {}", r[0], r[1])?;
    }
    Ok(())
}

fn read(a: &ReadArgs) -> CliResult {
    let (id, file) = resolve(&a.target, true, a.file.as_ref())?;
    let seg = SysvSegment::open_id(id, false)?;
    let size = seg.len() as u64;
    let name = seg.name().to_owned();
    let len = match a.len {
        Some(l) => l,
        None => size.checked_sub(a.offset).ok_or_else(|| {
            CliError::fail(format!(
                "read {name}: offset {} is past the end ({size} bytes)",
                a.offset
            ))
        })?,
    };
    if a.offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(CliError::fail(format!(
            "read {name}: {len} bytes at offset {} do not fit in {size} bytes",
            a.offset
        )));
    }
    let mut out: Box<dyn Write> = match &file {
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
        seg.read_at(a.offset + done, &mut buf[..n])?;
        out.write_all(&buf[..n])?;
        done += n as u64;
        progress.add(n as u64);
    }
    out.flush()?;
    progress.finish();
    Ok(())
}

fn write(a: &WriteArgs) -> CliResult {
    let (id, file) = resolve(&a.target, true, a.file.as_ref())?;
    let seg = SysvSegment::open_id(id, true)?;
    let name = seg.name().to_owned();
    let room = (seg.len() as u64).checked_sub(a.offset).ok_or_else(|| {
        CliError::fail(format!(
            "write {name}: offset {} is past the end ({} bytes)",
            a.offset,
            seg.len()
        ))
    })?;
    let mut input: Box<dyn Read> = match &file {
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
        .map_err(|e| CliError::fail(format!("write {name}: reading input: {e}")))?;
    if data.len() as u64 > room {
        return Err(CliError::fail(format!(
            "write {name}: input does not fit: more than {room} bytes from offset {} (segment is {} bytes); nothing written",
            a.offset,
            seg.len()
        )));
    }
    let mut progress = Progress::new("write", data.len() as u64);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        seg.write_at(a.offset + (i << 20) as u64, chunk)?;
        progress.add(chunk.len() as u64);
    }
    progress.finish();
    Ok(())
}

fn create(a: &CreateArgs) -> CliResult {
    let key = match (&a.key, &a.key_from) {
        (Some(k), _) => *k,
        (None, Some(spec)) => key_from(spec)?,
        (None, None) => {
            return Err(CliError::usage(
                "sysv create: a KEY or --key-from is required",
            ))
        }
    };
    let seg = SysvSegment::create(key, a.size, a.mode)?;
    // Print the id: the only handle on an IPC_PRIVATE segment.
    println!("{}", seg.id());
    seg.detach()?;
    Ok(())
}
