//! Where log lines go. A CLI command logs to stderr; the console must never
//! print over its screen, so there tracing writes to the Log pane and to a
//! file instead.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

/// Log lines from tracing go to the Log pane and to a file, never over the screen.
#[derive(Clone)]
pub struct LogSink {
    file: Arc<Mutex<Option<std::fs::File>>>,
    tx: Arc<Mutex<Option<UnboundedSender<String>>>>,
}

impl LogSink {
    pub fn new(path: Option<PathBuf>) -> LogSink {
        let file = path.and_then(|p| {
            // The log names VMs, paths and remotes: private to its owner.
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            if let Some(d) = p.parent() {
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d);
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .ok()
        });
        LogSink {
            file: Arc::new(Mutex::new(file)),
            tx: Arc::new(Mutex::new(None)),
        }
    }

    /// Writes one of the console's own lines (not tracing's) to the file,
    /// stamped with the time.
    pub fn write_file(&self, line: &str) {
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = writeln!(
                    f,
                    "{} {}",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    lifeboat_core::text::escape(line)
                );
            }
        }
    }

    pub fn connect(&self, tx: UnboundedSender<String>) {
        if let Ok(mut t) = self.tx.lock() {
            *t = Some(tx);
        }
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(buf);
            }
        }
        if let Ok(t) = self.tx.lock() {
            if let Some(t) = t.as_ref() {
                let line = String::from_utf8_lossy(buf).trim_end().to_string();
                if !line.is_empty() {
                    let _ = t.send(line);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
