//! Channels between processes: SPSC ring and zero-copy publish/subscribe.
