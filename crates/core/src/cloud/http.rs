//! HTTP for cloud APIs: one client per target (timeouts, a private CA, no
//! redirects), answers read with a bound, and a cloud's error body turned
//! into its own message, escaped, never echoing request headers.

use std::time::Duration;

use crate::error::{Error, Result};

/// The most of an API answer read (JSON catalogs and server lists are
/// small; a hostile endpoint cannot make us buffer more).
pub const MAX_ANSWER: usize = 8 << 20;

/// The most of an error body shown.
const MAX_MESSAGE: usize = 600;

pub fn client(timeout: Duration, ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client> {
    crate::store::tls::install_crypto();
    let mut b = reqwest::Client::builder()
        // A redirect could carry a token or the disk's bytes to another host.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(20).min(timeout))
        // A per-read timeout, not a total one: an upload of a large disk
        // takes as long as it takes, a stalled one is cut off.
        .read_timeout(timeout)
        .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_cert {
        let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA certificate", ca, e))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Error::BadInput(format!("CA certificate {}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
}

/// Errors of one step against one cloud.
#[derive(Clone, Debug)]
pub struct Step {
    pub target: String,
    pub phase: String,
}

impl Step {
    pub fn new(target: &str, phase: impl Into<String>) -> Step {
        Step {
            target: target.to_string(),
            phase: phase.into(),
        }
    }

    pub fn fail(&self, reason: impl Into<String>) -> Error {
        Error::Cloud {
            target: self.target.clone(),
            phase: self.phase.clone(),
            reason: reason.into(),
            transient: false,
            status: None,
        }
    }

    pub fn transient(&self, reason: impl Into<String>) -> Error {
        Error::Cloud {
            target: self.target.clone(),
            phase: self.phase.clone(),
            reason: reason.into(),
            transient: true,
            status: None,
        }
    }

    /// A request that got no answer: a dropped or refused connection, a
    /// timeout. Worth trying again.
    pub fn transport(&self, e: reqwest::Error) -> Error {
        let chain = crate::text::describe(&e);
        if let Some(why) = crate::store::tls::explain(&chain) {
            return self.fail(why);
        }
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            format!("cannot connect ({})", crate::store::http::root_cause(&e))
        } else {
            format!(
                "the connection failed ({})",
                crate::store::http::root_cause(&e)
            )
        };
        self.transient(crate::text::escape(&what).into_owned())
    }

    /// Sends a request and reads the whole answer (bounded). A non-2xx
    /// answer becomes an error with the cloud's own message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_bounded(resp, MAX_ANSWER).await.map_err(|e| match e {
            Some(e) => self.transport(e),
            None => self.fail(format!("the answer is over {MAX_ANSWER} bytes")),
        })?;
        if !status.is_success() {
            let msg = message_of(&body);
            let reason = if msg.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("{msg} (HTTP {})", status.as_u16())
            };
            let transient = status.is_server_error()
                || status.as_u16() == 429
                || msg.contains("Throttling")
                || msg.contains("RequestLimitExceeded");
            return Err(Error::Cloud {
                target: self.target.clone(),
                phase: self.phase.clone(),
                reason,
                transient,
                status: Some(status.as_u16()),
            });
        }
        Ok(Answer {
            status: status.as_u16(),
            headers,
            body,
        })
    }

    /// `send`, then the body as JSON.
    pub async fn json(&self, req: reqwest::RequestBuilder) -> Result<(Answer, serde_json::Value)> {
        let a = self.send(req).await?;
        let v = if a.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&a.body)
                .map_err(|e| self.fail(format!("the answer is not JSON ({e})")))?
        };
        Ok((a, v))
    }
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Reads a body up to `limit` bytes; `Err(None)` when it is longer.
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(None);
    }
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(Some)? {
        if out.len() + c.len() > limit {
            return Err(None);
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// The message in a cloud's error body: OpenStack's `{"badRequest":
/// {"message": …}}` / `{"error": {"message": …}}` / `{"message": …}`, AWS
/// EBS's `{"Message": …}` and EC2's XML `<Code>`/`<Message>`; else the
/// body's first line. Escaped and bounded.
pub fn message_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let found = if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        json_message(&v)
    } else if text.contains("<Message>") || text.contains("<message>") {
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let close = format!("</{t}>");
            let s = text.find(&open)? + open.len();
            let e = text[s..].find(&close)? + s;
            Some(text[s..e].to_string())
        };
        let msg = tag("Message").or_else(|| tag("message"));
        match (tag("Code"), msg) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (_, m) => m,
        }
    } else {
        None
    };
    let s = found.unwrap_or_else(|| {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    });
    let s = s
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let mut s = crate::text::escape(s.trim()).into_owned();
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    let direct = |o: &serde_json::Value| {
        ["message", "Message", "title"]
            .iter()
            .find_map(|k| o.get(k).and_then(|m| m.as_str()).map(str::to_string))
    };
    if let Some(m) = direct(v) {
        let code = v
            .get("__type")
            .or_else(|| v.get("Code"))
            .and_then(|c| c.as_str());
        return Some(match code {
            Some(c) => format!("{}: {m}", c.rsplit('#').next().unwrap_or(c)),
            None => m,
        });
    }
    // OpenStack wraps the message in an object named after the fault.
    v.as_object()?
        .values()
        .find_map(|inner| inner.is_object().then(|| direct(inner)).flatten())
}

/// The HTTP status a cloud refused with, if the error is such a refusal.
pub fn status_of(e: &Error) -> Option<u16> {
    match e {
        Error::Cloud { status, .. } => *status,
        _ => None,
    }
}

/// A cloud error with its reason rewritten (what to do about it); other
/// errors pass unchanged.
pub fn reword(e: Error, f: impl FnOnce(&str) -> String) -> Error {
    match e {
        Error::Cloud {
            target,
            phase,
            reason,
            transient,
            status,
        } => Error::Cloud {
            target,
            phase,
            reason: f(&reason),
            transient,
            status,
        },
        other => other,
    }
}

/// Waits `every` (or less at first), unless cancelled.
pub async fn pause(every: Duration, cancel: &crate::jobs::CancellationToken) -> Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(every) => Ok(()),
        _ = cancel.cancelled() => Err(Error::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::message_of;

    #[test]
    fn cloud_messages_are_found_and_escaped() {
        assert_eq!(
            message_of(
                br#"{"badRequest": {"message": "Flavor m9 could not be found.", "code": 400}}"#
            ),
            "Flavor m9 could not be found."
        );
        assert_eq!(
            message_of(br#"{"error": {"message": "The request you have made requires authentication.", "code": 401, "title": "Unauthorized"}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_of(b"<?xml version=\"1.0\"?><Response><Errors><Error><Code>InvalidSubnetID.NotFound</Code><Message>The subnet ID 'subnet-x' does not exist</Message></Error></Errors></Response>"),
            "InvalidSubnetID.NotFound: The subnet ID 'subnet-x' does not exist"
        );
        assert_eq!(
            message_of(b"{\"message\": \"bad \\u001b[31m red\"}"),
            "bad \\x1b[31m red"
        );
        assert!(message_of(&vec![b'x'; 5000]).len() < 700);
    }
}
