//! Limits that keep one slow or greedy client from taking the server down:
//! a cap on open connections (each holds a slot until it closes) with a
//! short answer for those past it, an idle timeout that counts requests,
//! not bytes (an HTTP/2 client answering pings is still idle), a memory
//! budget for request bodies across every route and connection, and a
//! raised file-descriptor soft limit. Header-read timeouts are set on the
//! HTTP builder in `serve`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode, Version};
use axum_server::accept::Accept;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections past the limit that still get a "server full" answer (so
/// the client can say why) before they are closed; beyond these, new
/// connections are closed at once.
const OVERFLOW: usize = 64;
/// How long an overflow connection may stay for its answer.
const OVERFLOW_IDLE: Duration = Duration::from_secs(2);

/// Accepts a connection while fewer than the limit are open; past it, a
/// few more are answered 503 with the reason, and the rest are closed at
/// once instead of waiting with an open descriptor.
#[derive(Clone)]
pub struct ConnectionLimit<A> {
    inner: A,
    slots: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, max: usize, idle: Duration) -> Self {
        ConnectionLimit {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
            overflow: Arc::new(Semaphore::new(OVERFLOW)),
            max: max.max(1),
            idle,
        }
    }
}

/// What a connection and the requests on it share: how many requests
/// are in progress (a response body still streaming counts), and since
/// when none is.
struct ConnState {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    /// Past the connection limit: every request is answered 503.
    overflow: Option<usize>,
    closed: AtomicBool,
}

impl ConnState {
    fn begin(self: &Arc<Self>) -> Guard {
        self.active.fetch_add(1, Ordering::SeqCst);
        Guard(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(since.elapsed())
    }
}

/// One request in progress; dropped when its response body is done.
struct Guard(Arc<ConnState>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

impl<A, I, S> Accept<I, S> for ConnectionLimit<A>
where
    A: Accept<I, Tracked<S>> + Clone + Send + Sync + 'static,
    A::Future: Send,
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let slot = self.slots.clone().try_acquire_owned();
        let overflow = self.overflow.clone().try_acquire_owned();
        let (inner, max, idle) = (self.inner.clone(), self.max, self.idle);
        Box::pin(async move {
            let (permit, over, idle) = match (slot, overflow) {
                (Ok(p), _) => (p, None, idle),
                (Err(_), Ok(p)) => {
                    tracing::warn!("connection limit ({max}) reached: answering 503");
                    (p, Some(max), OVERFLOW_IDLE)
                }
                (Err(_), Err(_)) => {
                    tracing::warn!("connection limit ({max}) reached: refusing a connection");
                    return Err(io::Error::other("connection limit reached"));
                }
            };
            let state = Arc::new(ConnState {
                active: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
                overflow: over,
                closed: AtomicBool::new(false),
            });
            let tracked = Tracked {
                inner: service,
                state: state.clone(),
            };
            let (stream, service) = inner.accept(stream, tracked).await?;
            Ok((
                Counted {
                    inner: stream,
                    _slot: permit,
                    state,
                    idle,
                    timer: Box::pin(tokio::time::sleep(idle)),
                },
                service,
            ))
        })
    }
}

/// The per-connection service: counts requests in progress, and answers
/// 503 on a connection past the limit.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> tower_service::Service<Request<B>> for Tracked<S>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.state.begin();
        if let Some(max) = self.state.overflow {
            let http1 = req.version() < Version::HTTP_2;
            return Box::pin(async move {
                let body = serde_json::json!({
                    "error": format!(
                        "the server is full: it serves at most {max} connections at once (serve --max-connections); try again in a moment"
                    )
                })
                .to_string();
                let mut resp = Response::new(Body::from(body));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
                if http1 {
                    resp.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                drop(guard);
                Ok(resp)
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // The request lasts until its body has been sent.
            Ok(resp.map(|b| {
                Body::new(GuardedBody {
                    inner: b,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted until it is done.
struct GuardedBody {
    inner: Body,
    _guard: Guard,
}

impl axum::body::HttpBody for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that gives its slot back when it is dropped, and ends
/// (as if the client had closed it) once no request has been in progress
/// on it for the idle timeout — whatever bytes such as HTTP/2 pings keep
/// arriving.
pub struct Counted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    state: Arc<ConnState>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_read(cx, buf) {
            if matches!(self.state.idle_for(), Some(d) if d >= self.idle) {
                self.state.closed.store(true, Ordering::SeqCst);
                tracing::debug!("closing a connection idle for {} s", self.idle.as_secs());
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(r);
        }
        loop {
            match self.state.idle_for() {
                Some(d) if d >= self.idle => {
                    self.state.closed.store(true, Ordering::SeqCst);
                    tracing::debug!("closing a connection idle for {} s", self.idle.as_secs());
                    return Poll::Ready(Ok(()));
                }
                Some(d) => {
                    let at = Instant::now() + (self.idle - d);
                    self.timer.as_mut().reset(at);
                }
                // A request is in progress; look again a timeout later.
                None => {
                    let at = Instant::now() + self.idle;
                    self.timer.as_mut().reset(at);
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bytes of request bodies held in memory at once, whatever the route,
/// role or connection: a body is read only once its size is reserved.
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// How long a request waits for room before a 503 (the header
    /// timeout: what a client is given to start being useful).
    wait: Duration,
}

impl BodyBudget {
    pub fn new(bytes: u64, wait: Duration) -> BodyBudget {
        let total_kib = (bytes / 1024).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        BodyBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
        }
    }

    /// Reserves room for a body of at most `bytes`; None when there is no
    /// room within the wait.
    pub async fn reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let kib = (bytes.div_ceil(1024)).clamp(1, u64::from(self.total_kib)) as u32;
        tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }
}

/// Raises the open-files soft limit to the hard limit (commonly 1024 →
/// 524288), so the connection limit, not the descriptor limit, is what a
/// flood of clients meets. Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to or read a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}
