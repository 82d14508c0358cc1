//! The exporter's one error type, [`ExportError`], and its classes by fault.

use std::fmt;
use std::time::Duration;

use crate::http::HttpError;

/// Why the exporter failed: a request to a gateway, classed by whose fault
/// it was ([`ExportError::fault`]) so that retry code matches on the class and
/// never on strings; or the exporter's own start.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum ExportError {
    /// The gateway answered 408, 429, 502, 503, 504 or another 5xx: try again
    /// later, after `retry_after` when it said so.
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The gateway's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// No answer within `export.timeout`.
    Timeout,
    /// The connection could not be made or broke (refused, reset, DNS, TLS
    /// handshake). Retried.
    Network(Box<dyn std::error::Error + Send + Sync>),
    /// The gateway refused the batch for good (a 4xx other than 408, 413 and
    /// 429, or a 3xx tern does not follow): sending it again cannot help, so
    /// it is dropped and counted.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The first part of the gateway's message.
        message: String,
    },
    /// The gateway answered 413: the request is larger than it takes. The
    /// exporter splits the batch and sends the parts; only a part holding a
    /// single item is dropped ([`DropReason::TooLarge`](crate::queue::DropReason::TooLarge)).
    TooLarge {
        /// The first part of the gateway's message.
        message: String,
    },
    /// A redirect that was not followed: more than [`MAX_REDIRECTS`](super::sender::MAX_REDIRECTS) hops, no
    /// or an unusable `Location`, or a change of scheme (an https endpoint
    /// redirected to http). A configuration problem on either side, but not
    /// the batch's fault: retried, never dropped.
    Redirect {
        /// The status of the redirect not followed.
        status: u16,
        /// What was wrong with it, with the Location when there was one.
        reason: String,
    },
    /// A local fault: the stored batch cannot be read (it does not
    /// decompress or decode). Sending it again cannot help, so it is dropped
    /// as [`DropReason::Corrupt`](crate::queue::DropReason::Corrupt), never
    /// retried.
    Corrupt(String),
    /// A local fault at start: the HTTP client could not be set up (an
    /// unreadable or empty CA, certificate or key file in `[export.tls]`).
    Setup(HttpError),
    /// A local fault at start: a sender, resolver or coordinator thread could
    /// not be started.
    Thread(std::io::Error),
}

/// Whose fault an [`ExportError`] is, which decides what becomes of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The gateway or the network, for now: the same batch is sent again
    /// after a backoff.
    Retryable,
    /// The gateway refused the batch for good (or, for 413, as it is): it is
    /// dropped, or split for 413.
    Permanent,
    /// Ours: the stored batch cannot be read, or the exporter could not
    /// start. Sending again cannot help.
    Local,
}

impl ExportError {
    /// Whether sending the same batch again, as it is, may succeed: false for
    /// the gateway's refusals ([`ExportError::Rejected`],
    /// [`ExportError::TooLarge`]) and for local faults ([`ExportError::Corrupt`]).
    pub(crate) fn is_retryable(&self) -> bool {
        self.fault() == Fault::Retryable
    }

    /// Whose fault it is.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            ExportError::Unavailable { .. }
            | ExportError::Timeout
            | ExportError::Network(_)
            | ExportError::Redirect { .. } => Fault::Retryable,
            ExportError::Rejected { .. } | ExportError::TooLarge { .. } => Fault::Permanent,
            ExportError::Corrupt(_) | ExportError::Setup(_) | ExportError::Thread(_) => {
                Fault::Local
            }
        }
    }

    /// Whether the gateway could not be reached or did not answer (a
    /// network error or a timeout): the failures a reachability probe can
    /// cut short. A gateway that answered (429, 503, a redirect) keeps its
    /// backoff.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, ExportError::Network(_) | ExportError::Timeout)
    }

    /// Whether the connection itself was refused or had no route: the
    /// gateway was down when the request was made.
    pub(crate) fn is_refused(&self) -> bool {
        let ExportError::Network(e) = self else {
            return false;
        };
        crate::http::is_connect_failure(e.as_ref())
    }

    /// The Retry-After the gateway asked for.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ExportError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for the `reason` of self metrics: `http_503`,
    /// `http_413`, `timeout`, `network`, `redirect`, `corrupt`.
    pub(crate) fn reason(&self) -> String {
        match self {
            ExportError::Unavailable { status, .. } | ExportError::Rejected { status, .. } => {
                format!("http_{status}")
            }
            ExportError::TooLarge { .. } => "http_413".into(),
            ExportError::Timeout => "timeout".into(),
            ExportError::Network(_) => "network".into(),
            ExportError::Redirect { .. } => "redirect".into(),
            ExportError::Corrupt(_) => "corrupt".into(),
            ExportError::Setup(_) => "setup".into(),
            ExportError::Thread(_) => "thread".into(),
        }
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Unavailable { status, .. } => {
                write!(f, "gateway unavailable: status {status}")
            }
            ExportError::Timeout => write!(f, "timeout"),
            ExportError::Network(e) => write!(f, "network: {e}"),
            ExportError::Rejected { status, message } => {
                write!(f, "rejected: status {status}: {message}")
            }
            ExportError::TooLarge { message } => {
                write!(f, "request too large: status 413: {message}")
            }
            ExportError::Redirect { status, reason } => {
                write!(f, "redirect not followed: status {status}: {reason}")
            }
            ExportError::Corrupt(e) => write!(f, "stored batch unreadable: {e}"),
            ExportError::Setup(e) => write!(f, "{e}"),
            ExportError::Thread(e) => write!(f, "thread not started: {e}"),
        }
    }
}

impl std::error::Error for ExportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExportError::Network(e) => Some(e.as_ref()),
            ExportError::Setup(e) => Some(e),
            ExportError::Thread(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HttpError> for ExportError {
    fn from(e: HttpError) -> ExportError {
        ExportError::Setup(e)
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> ExportError {
        ExportError::Thread(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_fault() {
        assert!(ExportError::Unavailable {
            status: 503,
            retry_after: None
        }
        .is_retryable());
        assert!(ExportError::Timeout.is_retryable());
        assert!(ExportError::Network("reset".into()).is_retryable());
        assert!(!ExportError::Rejected {
            status: 400,
            message: String::new()
        }
        .is_retryable());
        assert_eq!(
            ExportError::Rejected {
                status: 400,
                message: String::new()
            }
            .reason(),
            "http_400"
        );
        for local_or_split in [
            ExportError::TooLarge {
                message: String::new(),
            },
            ExportError::Corrupt("gunzip".into()),
        ] {
            assert!(!local_or_split.is_retryable());
        }
        assert!(ExportError::Redirect {
            status: 308,
            reason: "loop".into()
        }
        .is_retryable());
        assert_eq!(ExportError::Corrupt("gunzip".into()).fault(), Fault::Local);
        assert_eq!(
            ExportError::TooLarge {
                message: String::new()
            }
            .fault(),
            Fault::Permanent
        );
        assert!(std::mem::size_of::<ExportError>() <= 64);
    }

    #[test]
    fn keeps_the_cause_of_a_network_failure() {
        use std::error::Error;
        let e = ExportError::Network("connection reset".into());
        assert_eq!(e.to_string(), "network: connection reset");
        assert!(e.source().is_some());
        let setup = ExportError::from(HttpError::Tls("/ca.pem: no PEM certificate found".into()));
        assert_eq!(setup.fault(), Fault::Local);
        assert!(setup.source().is_some());
    }
}
