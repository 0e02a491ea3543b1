//! Segment keys and their place in the OS namespace.

use super::{Error, Result};

/// Every shmkit segment's file name starts with this, so listing finds
/// exactly shmkit's segments and never touches other software's.
pub const PREFIX: &str = "shmkit.";

/// Longest accepted key, in bytes. Linux allows 255-byte file names; the
/// prefix takes 7 and the rest is headroom. (macOS allows only 31 bytes for
/// the whole shm name: a macOS backend would map long keys to a hash.)
pub const MAX_NAME_LEN: usize = 200;

/// Checks a key: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or a digit (a key like `-rf` or
/// `.x` is a trap in a shell), and no `..` anywhere. Called before any
/// system call.
pub fn validate(op: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            op,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 200 bytes");
    }
    // One pass over the bytes (a non-ASCII byte is outside the alphabet
    // like any other): the first byte outside it decides the message,
    // else the first "..".
    let mut prev = 0u8;
    let mut dots = false;
    for &b in name.as_bytes() {
        if !ALPHABET[b as usize] {
            return match b {
                b'/' => bad("contains '/'"),
                0 => bad("contains a NUL byte"),
                _ => bad("only letters, digits, '.', '_' and '-' are allowed"),
            };
        }
        dots |= prev == b'.' && b == b'.';
        prev = b;
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or a digit");
    }
    if dots {
        return bad("contains '..'");
    }
    if name == "." {
        return bad("is '.'");
    }
    Ok(())
}

/// The bytes a key may contain: ASCII letters, digits, `.`, `_`, `-`.
const ALPHABET: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    t
};

/// The file name in `/dev/shm` for a (valid) key.
pub fn file_name(name: &str) -> String {
    // One allocation of the right size (`format!` grows its buffer).
    let mut file = String::with_capacity(PREFIX.len() + name.len());
    file.push_str(PREFIX);
    file.push_str(name);
    file
}

/// [`file_name`] as a C string on the stack, for the system calls: no
/// allocation, and no copy to add the NUL. For valid keys only (checked
/// by [`validate`]: at most [`MAX_NAME_LEN`] bytes, no NUL).
pub(crate) struct FileName {
    buf: [u8; PREFIX.len() + MAX_NAME_LEN + 1],
}

impl FileName {
    /// A key that is too long or has a NUL (never a validated one) gives
    /// the empty name, which every system call refuses (`ENOENT`), never
    /// another file's name.
    pub(crate) fn new(name: &str) -> FileName {
        let mut buf = [0u8; PREFIX.len() + MAX_NAME_LEN + 1];
        let key = name.as_bytes();
        if key.len() <= MAX_NAME_LEN && !key.contains(&0) {
            buf[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
            buf[PREFIX.len()..PREFIX.len() + key.len()].copy_from_slice(key);
        }
        FileName { buf }
    }

    /// The name up to its first NUL (the last byte is always one).
    pub(crate) fn as_c_str(&self) -> &std::ffi::CStr {
        std::ffi::CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_on_the_stack_is_the_same_name() {
        for key in ["a", "cam0.frames", &"x".repeat(MAX_NAME_LEN)] {
            let c = FileName::new(key);
            assert_eq!(c.as_c_str().to_str().unwrap(), file_name(key));
        }
        for bad in ["a\0b", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(FileName::new(bad).as_c_str().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "A-z_0.9", "cam0.frames", &"x".repeat(MAX_NAME_LEN)] {
            validate("test", ok).unwrap();
        }
    }

    #[test]
    fn rejects_every_bad_class() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "/",
            "a/b",
            "..",
            "a..b",
            ".",
            "nul\0",
            "space here",
            "é",
            "a*",
            "-rf",
            "--help",
            ".hidden",
            "_x",
            &long,
        ] {
            let e = validate("test", bad).unwrap_err();
            assert!(matches!(e, Error::InvalidName { .. }), "{bad:?}: {e}");
        }
    }
}
