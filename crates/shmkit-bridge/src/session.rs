//! Building a Zenoh configuration from the bridge's options.
//!
//! Without `--config`, the base is Zenoh's default configuration **with
//! its listen endpoints replaced by exactly the `--listen` list** (Zenoh's
//! default peer would listen on `tcp/[::]:0`, every interface): a bridge
//! listens only where it is told to, with two transport settings raised
//! (blocking congestion control may wait an hour, and an 8 MiB receive
//! buffer pool per link for large messages).

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// Zenoh's per-link receive buffer pool the bridge configures (without
/// `--config`), bytes.
pub const RX_BUFFER: usize = 8 << 20;

/// Zenoh node mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Connects to peers and routers, may accept connections.
    #[default]
    Peer,
    /// Connects to exactly one router or peer.
    Client,
}

/// How to open the Zenoh session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// A Zenoh JSON5 configuration file, the base of everything else.
    pub config: Option<PathBuf>,
    /// Endpoints to listen on (`tcp/127.0.0.1:7447`); replaces the base's.
    pub listen: Vec<String>,
    /// Endpoints to connect to; replaces the base's when not empty.
    pub connect: Vec<String>,
    /// Node mode (default: the config file's, else peer).
    pub mode: Option<Mode>,
    /// Turn multicast scouting off.
    pub no_multicast_scouting: bool,
    /// Turn gossip scouting off (peers then learn of each other only
    /// through the endpoints given).
    pub no_gossip: bool,
    /// Fail to open if no `connect` endpoint answers within this time
    /// (instead of retrying in the background for ever).
    pub connect_timeout: Option<Duration>,
}

impl SessionOptions {
    /// Options for a test or example on one machine: explicit endpoints,
    /// no scouting of any kind.
    pub fn loopback(listen: &[String], connect: &[String]) -> SessionOptions {
        SessionOptions {
            listen: listen.to_vec(),
            connect: connect.to_vec(),
            no_multicast_scouting: true,
            no_gossip: true,
            ..SessionOptions::default()
        }
    }

    /// The Zenoh configuration these options describe.
    pub fn to_config(&self) -> Result<zenoh::Config, Error> {
        let cfg_err = |what: &str, e: zenoh::Error| Error::Config(format!("{what}: {e}"));
        let mut c = match &self.config {
            Some(p) => zenoh::Config::from_file(p)
                .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?,
            None => {
                let mut c = zenoh::Config::default();
                c.insert_json5("listen/endpoints", &json_list(&self.listen)?)
                    .map_err(|e| cfg_err("--listen", e))?;
                // Back-pressure end to end: a `Block` put may wait as long
                // as the far side's local reader is slow. Zenoh's default
                // closes the link after 5 s blocked; make it an hour.
                c.insert_json5(
                    "transport/link/tx/queue/congestion_control/block/wait_before_close",
                    "3600000000",
                )
                .map_err(|e| cfg_err("congestion control", e))?;
                // Large messages: Zenoh reads each link into a pool of
                // `buffer_size / 64 KiB` batch buffers and allocates (and
                // zeroes) a new one whenever all are still held, and a
                // message keeps its fragments' batches until it is
                // delivered. The default (64 KiB: one buffer) makes a
                // 1 MiB message cost 15 zeroed allocations; 8 MiB keeps
                // several 1 MiB messages in recycled buffers (8 MiB of
                // memory per link).
                c.insert_json5("transport/link/rx/buffer_size", &RX_BUFFER.to_string())
                    .map_err(|e| cfg_err("rx buffer size", e))?;
                c
            }
        };
        if self.config.is_some() && !self.listen.is_empty() {
            c.insert_json5("listen/endpoints", &json_list(&self.listen)?)
                .map_err(|e| cfg_err("--listen", e))?;
        }
        if !self.connect.is_empty() {
            c.insert_json5("connect/endpoints", &json_list(&self.connect)?)
                .map_err(|e| cfg_err("--connect", e))?;
        }
        if let Some(m) = self.mode {
            let m = match m {
                Mode::Peer => "\"peer\"",
                Mode::Client => "\"client\"",
            };
            c.insert_json5("mode", m)
                .map_err(|e| cfg_err("--mode", e))?;
        }
        if self.no_multicast_scouting {
            c.insert_json5("scouting/multicast/enabled", "false")
                .map_err(|e| cfg_err("--no-multicast-scouting", e))?;
        }
        if self.no_gossip {
            c.insert_json5("scouting/gossip/enabled", "false")
                .map_err(|e| cfg_err("--no-gossip", e))?;
        }
        if let Some(t) = self.connect_timeout {
            c.insert_json5("connect/timeout_ms", &t.as_millis().to_string())
                .map_err(|e| cfg_err("--connect-timeout", e))?;
            c.insert_json5("connect/exit_on_failure", "true")
                .map_err(|e| cfg_err("--connect-timeout", e))?;
        }
        Ok(c)
    }

    /// Opens a session with these options; a clear error if an endpoint
    /// is malformed, a listen address is taken, or (with
    /// `connect_timeout`) nobody answers.
    pub async fn open(&self) -> Result<zenoh::Session, Error> {
        let c = self.to_config()?;
        let what = format!(
            "opening the Zenoh session (listen {:?}, connect {:?})",
            self.listen, self.connect
        );
        match self.connect_timeout {
            // Zenoh's own timeout governs the connect phase; ours is a
            // backstop a little later, so a stuck open still ends.
            Some(t) => tokio::time::timeout(t + Duration::from_secs(5), zenoh::open(c))
                .await
                .map_err(|_| Error::Zenoh(format!("{what}: timed out after {t:?}")))?
                .map_err(|e| Error::Zenoh(format!("{what}: {e}"))),
            None => zenoh::open(c)
                .await
                .map_err(|e| Error::Zenoh(format!("{what}: {e}"))),
        }
    }
}

fn json_list(items: &[String]) -> Result<String, Error> {
    let mut s = String::from("[");
    for (i, e) in items.iter().enumerate() {
        if e.contains(['"', '\\']) || e.chars().any(char::is_control) {
            return Err(Error::Config(format!("bad endpoint {e:?}")));
        }
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(e);
        s.push('"');
    }
    s.push(']');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_listens_only_where_told_and_raises_rx_buffer() {
        let c = SessionOptions::loopback(&["tcp/127.0.0.1:7447".into()], &[])
            .to_config()
            .unwrap();
        assert_eq!(
            c.get_json("listen/endpoints").unwrap().replace(' ', ""),
            r#"["tcp/127.0.0.1:7447"]"#
        );
        assert_eq!(
            c.get_json("transport/link/rx/buffer_size").unwrap(),
            RX_BUFFER.to_string()
        );
    }
}
