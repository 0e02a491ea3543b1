//! Shared CLI helpers: the error type, size and duration parsing, output
//! formatting.

use std::fmt;
use std::time::Duration;

/// A command failure: one line for stderr and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// The message, printed as `shmkit: {message}`.
    pub message: String,
    /// Exit status (1 for failures, 2 for usage errors).
    pub code: i32,
}

impl CliError {
    /// A runtime failure (exit 1).
    pub fn fail(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    /// A failure already reported on stderr: exit with `code`, print nothing.
    pub fn silent(code: i32) -> CliError {
        CliError {
            message: String::new(),
            code,
        }
    }

    /// A failure with a specific exit status.
    #[allow(dead_code)] // for commands with meaningful exit codes (sem wait)
    pub fn with_code(code: i32, message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<shmkit::segment::Error> for CliError {
    fn from(e: shmkit::segment::Error) -> CliError {
        CliError::fail(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::fail(e.to_string())
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Parses a size. One convention, as `numfmt --from=auto` and `df`/`dd`
/// spell SI units: `K`, `M`, `G`, `T` (also `KB`, `MB`...; any case) are
/// powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` (also `Ki`, `Mi`...) are
/// powers of 1024; `B` or nothing is bytes. A fraction is accepted when the
/// result is a whole number of bytes (`1.5GiB`, `2.5K`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(format!(
            "invalid size {s:?}: expected a number like 4096, 64KiB, 1.5GiB or 100M"
        ));
    }
    let unit = unit.trim();
    let mult: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB powers of 1024)"
            ))
        }
    };
    let too_large = || format!("invalid size {s:?}: too large");
    if int.len() + frac.len() > 30 {
        return Err(too_large());
    }
    // Exact arithmetic: value = int.frac * mult, in units of 10^-frac.len().
    let scale = 10u128.pow(frac.len() as u32);
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| too_large())?;
    let scaled = digits.checked_mul(mult).ok_or_else(too_large)?;
    if scaled % scale != 0 {
        return Err(format!(
            "invalid size {s:?}: not a whole number of bytes ({} bytes)",
            scaled as f64 / scale as f64
        ));
    }
    u64::try_from(scaled / scale).map_err(|_| too_large())
}

/// Parses a duration: `500ms`, `5s`, `2m`, `1h`, `250us`; a bare number is
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s or 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `64.0 MiB`-style rendering of a byte count.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `3s`, `5m`, `2h`, `4d`: a compact age.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else if s < 172_800 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// Renders rows as a left-aligned text table with a header line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_one_convention_si_and_binary() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        // K/M/G/T (and KB/MB, any case) are powers of 1000.
        assert_eq!(parse_size("4K").unwrap(), 4_000);
        assert_eq!(parse_size("64mb").unwrap(), 64_000_000);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("2T").unwrap(), 2_000_000_000_000);
        // KiB/MiB/GiB/TiB (and Ki/Mi...) are powers of 1024.
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2gib").unwrap(), 2 << 30);
        assert_eq!(parse_size("4Ki").unwrap(), 4096);
        assert_eq!(parse_size("100TiB").unwrap(), 100 << 40);
        // Fractions that give whole bytes.
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2.5K").unwrap(), 2_500);
        assert_eq!(parse_size("0.5 MiB").unwrap(), 512 << 10);
        for bad in [
            "",
            "MiB",
            "12XB",
            "-1",
            "99999999999999999999",
            "20000000TiB",
            "1.",
            ".5K",
            "1.2.3K",
            "1.1B",
            "0.1KiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let e = parse_size("0.1KiB").unwrap_err();
        assert!(e.contains("whole number of bytes"), "{e}");
        let e = parse_size("5parsecs").unwrap_err();
        assert!(
            e.contains("powers of 1000") && e.contains("powers of 1024"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "s", "5x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
