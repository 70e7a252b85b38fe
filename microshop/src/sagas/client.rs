//! The connection to the orchestrator's `SagaAdminService`: the URL (TLS
//! for `https://`, verified against `--ca-file` only), the bearer token of
//! `--token-file`, a deadline on every call, and gRPC errors turned into
//! [`CliError`]s that say what to do.

use std::time::{Duration, SystemTime};

use microshop_proto::orchestrator::v1::{
    self as pb, saga_admin_service_client::SagaAdminServiceClient,
};
use microshop_runtime::{Reason, errors::reason_of};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::{
    args::{Connection, ListFilters},
    error::CliError,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of GetSaga and of one ListSagas page.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of RetrySaga and AbortSaga: the orchestrator waits for the
/// re-drive or the compensation within it (it stops waiting at 25 s and
/// answers with the saga as it is then).
pub const ACT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest ListSagas page.
const MAX_PAGE: usize = 100;
/// Extra time the client waits past a deadline for the server's answer.
const GRACE: Duration = Duration::from_secs(5);

/// Adds `authorization: Bearer <token>` to every call, when given.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected admin client.
#[derive(Clone, Debug)]
pub struct Admin {
    client: SagaAdminServiceClient<InterceptedService<Channel, Bearer>>,
    /// Whether a token is sent (for the advice of UNAUTHENTICATED).
    with_token: bool,
    /// The orchestrator's URL as given (for the advice of an address that
    /// answers something else).
    url: String,
}

/// The bearer header value of the token in `path`.
fn read_token(path: &std::path::Path) -> Result<MetadataValue<Ascii>, CliError> {
    let bad = |why: String| CliError::File {
        what: "token file",
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("it is empty; put an admin JWT in it".into()));
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| bad("it holds characters a token cannot have; put an admin JWT in it".into()))
}

/// The error chain of `err`, joined (tonic's top level says only
/// "transport error").
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The endpoint of `conn`: its URL, and TLS for `https://`.
fn endpoint(conn: &Connection) -> Result<Endpoint, CliError> {
    let url = conn.url.trim();
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(CliError::Usage(format!(
            "--orchestrator {url:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:50051)"
        )));
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            CliError::Usage(format!(
                "--orchestrator {url:?} is not a valid URL ({e}); e.g. http://127.0.0.1:50051"
            ))
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    match (tls, &conn.ca_file) {
        (false, None) => Ok(endpoint),
        (false, Some(_)) => Err(CliError::Usage(format!(
            "--ca-file is for TLS: use an https:// URL with it (not {url})"
        ))),
        (true, None) => Err(CliError::Usage(format!(
            "{url} is TLS: pass --ca-file with the PEM CA certificate that signed the \
             orchestrator's certificate"
        ))),
        (true, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    microshop_runtime::tls::check_certificates(&pem)
                        .map(|()| pem)
                        .map_err(|why| format!("it {why}"))
                })
                .map_err(|why| CliError::File {
                    what: "CA file",
                    path: path.clone(),
                    why,
                })?;
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint.tls_config(config).map_err(|e| CliError::File {
                what: "CA file",
                path: path.clone(),
                why: chain(&e),
            })
        }
    }
}

impl Admin {
    /// Connects to the orchestrator of `conn` (at once, so an unreachable
    /// or untrusted server is told apart from a failing call).
    pub async fn connect(conn: &Connection) -> Result<Self, CliError> {
        let endpoint = endpoint(conn)?;
        let token = conn.token_file.as_deref().map(read_token).transpose()?;
        let with_token = token.is_some();
        let channel = endpoint.connect().await.map_err(|e| {
            let why = chain(&e);
            let hint = if conn.ca_file.is_some()
                && (why.contains("certificate") || why.contains("tls") || why.contains("TLS"))
            {
                "; and that --ca-file is the CA that signed its certificate".to_owned()
            } else {
                String::new()
            };
            CliError::Unreachable {
                url: conn.url.trim().to_owned(),
                why,
                hint,
            }
        })?;
        Ok(Self {
            client: SagaAdminServiceClient::with_interceptor(channel, Bearer(token)),
            with_token,
            url: conn.url.trim().to_owned(),
        })
    }

    /// GetSaga.
    pub async fn get(&self, saga_id: &str) -> Result<pb::Saga, CliError> {
        let req = pb::GetSagaRequest {
            saga_id: saga_id.to_owned(),
        };
        let mut client = self.client.clone();
        let reply = bounded(
            READ_TIMEOUT,
            client.get_saga(with_deadline(req, READ_TIMEOUT)),
        )
        .await
        .map_err(|s| self.error("GetSaga", Some(saga_id), &s))?;
        reply.saga.ok_or_else(|| CliError::Rpc {
            what: "GetSaga",
            code: "INTERNAL".into(),
            message: "the answer holds no saga".into(),
        })
    }

    /// One ListSagas page.
    pub async fn list_page(
        &self,
        req: pb::ListSagasRequest,
    ) -> Result<pb::ListSagasResponse, CliError> {
        let mut client = self.client.clone();
        bounded(
            READ_TIMEOUT,
            client.list_sagas(with_deadline(req, READ_TIMEOUT)),
        )
        .await
        .map_err(|s| self.error("ListSagas", None, &s))
    }

    /// Up to `filters.limit` sagas matching `filters`, newest first, from
    /// `page_token` on: pages are fetched until the limit is reached or
    /// none is left (a page may come back short with a next token when
    /// few sagas match). Returns them and the token to continue after.
    pub async fn list(
        &self,
        filters: &ListFilters,
        page_token: Option<String>,
        now: SystemTime,
    ) -> Result<(Vec<pb::Saga>, String), CliError> {
        let mut req = filters.request(now)?;
        req.page_token = page_token.unwrap_or_default();
        let mut sagas = Vec::new();
        loop {
            let want = filters.limit.saturating_sub(sagas.len()).min(MAX_PAGE);
            req.page_size = i32::try_from(want).unwrap_or(1);
            let page = self.list_page(req.clone()).await?;
            sagas.extend(page.sagas);
            if sagas.len() >= filters.limit || page.next_page_token.is_empty() {
                return Ok((sagas, page.next_page_token));
            }
            if page.next_page_token == req.page_token {
                return Err(CliError::Rpc {
                    what: "ListSagas",
                    code: "INTERNAL".into(),
                    message: "the orchestrator returned the same page token twice".into(),
                });
            }
            req.page_token = page.next_page_token;
        }
    }

    /// RetrySaga; the raw status on error (the caller tells a no-op apart).
    pub async fn retry(&self, saga_id: &str, reason: &str) -> Result<pb::Saga, Status> {
        let req = pb::RetrySagaRequest {
            saga_id: saga_id.to_owned(),
            reason: reason.to_owned(),
        };
        let mut client = self.client.clone();
        let reply = bounded(
            ACT_TIMEOUT,
            client.retry_saga(with_deadline(req, ACT_TIMEOUT)),
        )
        .await?;
        reply
            .saga
            .ok_or_else(|| Status::internal("the answer holds no saga"))
    }

    /// AbortSaga; the raw status on error.
    pub async fn abort(&self, saga_id: &str, reason: &str) -> Result<pb::Saga, Status> {
        let req = pb::AbortSagaRequest {
            saga_id: saga_id.to_owned(),
            reason: reason.to_owned(),
        };
        let mut client = self.client.clone();
        let reply = bounded(
            ACT_TIMEOUT,
            client.abort_saga(with_deadline(req, ACT_TIMEOUT)),
        )
        .await?;
        reply
            .saga
            .ok_or_else(|| Status::internal("the answer holds no saga"))
    }

    /// The [`CliError`] of a failed call `what` (on `saga_id`, if one).
    pub fn error(&self, what: &'static str, saga_id: Option<&str>, status: &Status) -> CliError {
        match status.code() {
            Code::Unauthenticated => CliError::Unauthenticated {
                message: status.message().to_owned(),
                advice: if self.with_token {
                    "the token is invalid or expired: get a fresh admin JWT and pass it with \
                     --token-file (or MICROSHOP_TOKEN_FILE)"
                } else {
                    "authentication is on: pass an admin JWT with --token-file (or \
                     MICROSHOP_TOKEN_FILE)"
                },
            },
            Code::PermissionDenied => CliError::PermissionDenied(status.message().to_owned()),
            Code::NotFound if reason_of(status) == Some(Reason::UnknownSaga) => {
                CliError::UnknownSaga(saga_id.unwrap_or_default().to_owned())
            }
            // A participant's port (no SagaAdminService there), or a port
            // that does not speak gRPC at all (the metrics port: an h2
            // error, or a closed connection below).
            Code::Unimplemented => CliError::NotAnOrchestrator {
                url: self.url.clone(),
                what: "does not serve microshop.orchestrator.v1.SagaAdminService",
            },
            Code::Internal | Code::Unknown if status.message().contains("h2 protocol error") => {
                CliError::NotAnOrchestrator {
                    url: self.url.clone(),
                    what: "does not speak gRPC",
                }
            }
            // An HTTP/1 server (the metrics port) answers the HTTP/2
            // preface by closing the connection: seen as closed, as a
            // broken pipe or a reset when the request was still being
            // sent, or as not ready when it had not been sent yet.
            Code::Unknown | Code::Cancelled | Code::Unavailable if closed(status) => {
                CliError::NoGrpcAnswer {
                    url: self.url.clone(),
                }
            }
            Code::DeadlineExceeded => CliError::Timeout {
                what,
                secs: match what {
                    "RetrySaga" | "AbortSaga" => ACT_TIMEOUT.as_secs(),
                    _ => READ_TIMEOUT.as_secs(),
                },
            },
            code => CliError::Rpc {
                what,
                code: code_name(code).to_owned(),
                message: with_causes(status),
            },
        }
    }
}

/// The status's message and its sources' [`chain`]: a failure on the
/// client's side ("transport error") says why only in those. The first
/// source often repeats the message ("transport error" again); what
/// follows it is still said.
fn with_causes(status: &Status) -> String {
    let message = status.message();
    match std::error::Error::source(status).map(chain) {
        Some(causes) => match causes.strip_prefix(message) {
            Some("") => message.to_owned(),
            Some(rest) => format!("{message}{rest}"),
            None if message.contains(&causes) => message.to_owned(),
            None => format!("{message}: {causes}"),
        },
        None => message.to_owned(),
    }
}

/// Whether the connection ended under the call without an answer.
fn closed(status: &Status) -> bool {
    let causes = with_causes(status).to_ascii_lowercase();
    [
        "connection closed",
        "broken pipe",
        "connection reset",
        "connection was not ready",
    ]
    .iter()
    .any(|sign| causes.contains(sign))
}

/// `message` with a gRPC deadline the server sees (`grpc-timeout`).
fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Awaits `call`, giving up a little after `deadline` should the server
/// never answer.
async fn bounded<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(deadline + GRACE, call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer from the orchestrator")),
    }
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(url: &str, ca: Option<&str>) -> Connection {
        Connection {
            url: url.to_owned(),
            token_file: None,
            ca_file: ca.map(Into::into),
        }
    }

    #[test]
    fn urls_and_tls_flags_must_agree() {
        assert!(endpoint(&conn("http://127.0.0.1:50051", None)).is_ok());
        for (url, ca) in [
            ("127.0.0.1:50051", None),
            ("grpc://x:1", None),
            ("http://127.0.0.1:50051", Some("ca.pem")),
            ("https://127.0.0.1:50051", None),
        ] {
            let err = endpoint(&conn(url, ca)).expect_err(url);
            assert_eq!(err.exit_code(), 2, "{url} {ca:?}: {err}");
        }
        let missing = endpoint(&conn("https://127.0.0.1:1", Some("/nonexistent/ca.pem")))
            .expect_err("a missing CA file");
        assert!(matches!(missing, CliError::File { .. }), "{missing}");
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def.ghi\n").expect("write");
        assert_eq!(read_token(&path).expect("a token"), "Bearer abc.def.ghi");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(read_token(&path), Err(CliError::File { .. })));
        std::fs::write(&path, "a\u{7f}b").expect("write");
        assert!(matches!(read_token(&path), Err(CliError::File { .. })));
        assert!(read_token(&dir.path().join("none")).is_err());
    }

    /// An error saying `text`, caused by `source`.
    #[derive(Debug)]
    struct Caused(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Caused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Caused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    /// The metrics port (HTTP/1) closing the connection while the request
    /// was still being sent: tonic says only "transport error", the cause
    /// is two sources down. Seen once in three `sagas list` runs.
    #[tokio::test]
    async fn a_connection_ended_mid_request_says_where_to_point() {
        let pipe = std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        );
        let status = Status::from_error(Box::new(Caused("transport error", Some(pipe))));
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert_eq!(
            with_causes(&status),
            "transport error: stream closed because of a broken pipe"
        );
        let url = "http://127.0.0.1:9464";
        let client = Admin {
            client: SagaAdminServiceClient::with_interceptor(
                Endpoint::from_static(url).connect_lazy(),
                Bearer(None),
            ),
            with_token: false,
            url: url.to_owned(),
        };
        let err = client.error("ListSagas", None, &status);
        assert!(matches!(err, CliError::NoGrpcAnswer { .. }), "{err}");
        let early = Status::from_error(Box::new(Caused(
            "operation was canceled",
            Some(std::io::Error::other("connection was not ready")),
        )));
        let err = client.error("ListSagas", None, &early);
        assert!(matches!(err, CliError::NoGrpcAnswer { .. }), "{err}");
        let other = Status::from_error(Box::new(Caused("transport error", None)));
        assert_eq!(with_causes(&other), "transport error");
        let err = client.error("ListSagas", None, &other);
        assert!(matches!(err, CliError::Rpc { .. }), "{err}");
    }
}
