//! Bounded polling (never a blind sleep): a condition, the sagas settling,
//! a server's health.

use std::{future::Future, net::SocketAddr, time::Duration};

use microshop::invariants;
use microshop_proto::orchestrator::v1::{
    self as orch, saga_admin_service_client::SagaAdminServiceClient,
};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::saga::saga_state;

/// Polls `probe` until it returns `Ok`, for at most `within`; panics with
/// `what` and the last `Err` (the state seen) when the deadline passes.
/// The pause between polls grows from 10 ms to 200 ms.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls ListSagas until no saga is RUNNING or COMPENSATING, for at most
/// `within`; returns every saga as last listed.
pub async fn quiesce(admin: &SagaAdminServiceClient<Channel>, within: Duration) -> Vec<orch::Saga> {
    eventually("every saga to settle", within, || {
        let mut admin = admin.clone();
        async move {
            let sagas = invariants::all_sagas(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
            let busy: Vec<String> = sagas
                .iter()
                .filter(|s| {
                    matches!(
                        saga_state(s),
                        orch::SagaState::Running | orch::SagaState::Compensating
                    )
                })
                .map(|s| format!("{} {}", s.saga_id, saga_state(s).as_str_name()))
                .collect();
            if busy.is_empty() {
                Ok(sagas)
            } else {
                Err(format!("still busy: {busy:?}"))
            }
        }
    })
    .await
}

/// A lazily connecting health client of the server at `addr`.
pub fn health_client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid url")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    HealthClient::new(channel)
}

/// Polls `grpc.health.v1.Health/Check` for `service` until it answers
/// `want`, for at most `within`.
pub async fn wait_health(
    client: &HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    within: Duration,
) {
    let what = format!("health of {service:?} to be {}", want.as_str_name());
    eventually(&what, within, || {
        let mut client = client.clone();
        let service = service.to_owned();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest { service });
            request.set_timeout(Duration::from_secs(2));
            match client.check(request).await {
                Ok(r) if r.get_ref().status == want as i32 => Ok(()),
                Ok(r) => Err(format!(
                    "status {:?}",
                    ServingStatus::try_from(r.get_ref().status)
                )),
                Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
            }
        }
    })
    .await;
}
