//! The line-oriented JSON peers QEMU offers (QMP, the guest agent).

use std::time::Duration;

/// A line-oriented peer: both directions time out, and the reading half
/// is buffered.
pub(super) fn split(
    stream: std::os::unix::net::UnixStream,
    timeout: Duration,
) -> std::io::Result<(
    std::os::unix::net::UnixStream,
    std::io::BufReader<std::os::unix::net::UnixStream>,
)> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok((stream.try_clone()?, std::io::BufReader::new(stream)))
}

/// The answer to `cmd` in QMP's reply shape (the guest agent's too):
/// `{"return": …}`, or `{"error": {"desc": …}}` as escaped text.
pub(super) fn reply(
    cmd: &str,
    v: &serde_json::Value,
) -> std::result::Result<serde_json::Value, String> {
    if let Some(e) = v.get("error") {
        let desc = e
            .get("desc")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error");
        return Err(format!("{cmd}: {}", crate::text::escape(desc)));
    }
    Ok(v.get("return").cloned().unwrap_or(serde_json::Value::Null))
}
