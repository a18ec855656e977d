//! A pooled response's body: read to its end before its connection goes back
//! to the pool (or, for HTTP/2, before the stream is let go), so that no
//! completed stream is reset.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use super::{Origin, DRAIN_TIMEOUT};
use crate::answer::reply::Body;

/// One stream counted on a multiplexed connection until dropped.
pub(super) struct InFlight(pub(super) Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a finished response gives back to the pool.
pub(super) enum Release {
    /// The connection takes its next request once the response was read.
    Http1(Arc<Origin>, http1::SendRequest<Body>),
    Http2(Arc<Origin>, InFlight),
}

/// A pooled response's body. At its end, the connection goes back to the
/// pool. Dropped with every byte received but the end not yet seen (an
/// HTTP/1.1 client's connection stops reading at `Content-Length`), it is
/// read to its end in the background: dropping it there would reset a
/// stream that completed, which servers count as an attack.
pub(super) struct PooledBody {
    /// Taken by `drop` to read the end in the background.
    inner: Option<Incoming>,
    /// Bytes still due by `Content-Length`.
    remaining: Option<u64>,
    release: Option<Release>,
}

impl PooledBody {
    pub(super) fn wrap(response: Response<Incoming>, release: Release) -> Response<Body> {
        // A 304 or 204 has no body whatever its headers say (RFC 9110 §6.4.1): with its head, every
        // byte has arrived, and a client gone by then must not make the proxy reset the stream.
        let status = response.status();
        let remaining = match status.is_informational() || status == 204 || status == 304 {
            true => Some(0),
            false => response.body().size_hint().exact(),
        };
        response.map(|inner| {
            let mut body = PooledBody { inner: Some(inner), remaining, release: Some(release) };
            if body.is_end_stream() {
                body.finish();
            }
            body.boxed()
        })
    }

    /// The body ended: its connection goes back to the pool.
    fn finish(&mut self) {
        if let Some(Release::Http1(origin, sender)) = self.release.take() {
            origin.keep_idle(sender);
        }
    }

    fn inner(self: Pin<&mut Self>) -> Pin<&mut Incoming> {
        Pin::new(self.get_mut().inner.as_mut().expect("taken only by drop"))
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(self.as_mut().inner().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(remaining), Some(data)) = (self.remaining.as_mut(), frame.data_ref()) {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                if self.is_end_stream() {
                    self.finish();
                }
            }
            None => self.finish(),
            // A broken response: its connection is not given back.
            Some(Err(_)) => self.release = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |inner| inner.size_hint())
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else { return };
        let complete = self.remaining == Some(0);
        match release {
            Release::Http1(origin, sender) if complete => origin.keep_idle(sender),
            // Part of the body unread: the connection closes with it.
            Release::Http1(..) => {}
            Release::Http2(origin, in_flight) if complete => {
                let Some(mut inner) = self.inner.take() else { return };
                origin.tasks.spawn(async move {
                    let _ =
                        tokio::time::timeout(DRAIN_TIMEOUT, async { while let Some(Ok(_)) = inner.frame().await {} })
                            .await;
                    drop(in_flight);
                });
            }
            // The client went away mid-body: the stream is reset, once.
            Release::Http2(..) => {}
        }
    }
}
