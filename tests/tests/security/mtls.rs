//! mTLS between the orchestrator and the participants, with a test PKI
//! made here: participants take saga calls only from the orchestrator's
//! certificate, not without one nor with another of the same CA.

use super::*;

/// Test PKI made now (no private key is checked in): a CA, the
/// participants' server certificate (localhost, 127.0.0.1), the
/// orchestrator's certificate (`orchestrator.microshop`, also localhost
/// for its own port), and a rogue client signed by the same CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write");
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, sans) in [
            ("participant", vec!["localhost", "127.0.0.1"]),
            (
                "orchestrator",
                vec!["orchestrator.microshop", "localhost", "127.0.0.1"],
            ),
            ("rogue", vec!["rogue.microshop"]),
        ] {
            let mut params =
                CertificateParams::new(sans.into_iter().map(str::to_owned).collect::<Vec<_>>())
                    .expect("params");
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                .expect("write");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("read")
    }

    fn server_args(&self, data_dir: &std::path::Path, who: &str) -> microshop_runtime::ServerArgs {
        let mut args = microshop_runtime::ServerArgs::with_data_dir(data_dir);
        args.tls.tls_cert_file = Some(self.path(&format!("{who}.pem")));
        args.tls.tls_key_file = Some(self.path(&format!("{who}.key")));
        args.tls.tls_ca_file = Some(self.path("ca.pem"));
        if who == "participant" {
            args.tls.tls_saga_client_name = Some("orchestrator.microshop".into());
        }
        args
    }

    /// A TLS channel to `addr`, presenting `client` (a cert name) if any.
    async fn channel(
        &self,
        addr: std::net::SocketAddr,
        client: Option<&str>,
    ) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if let Some(name) = client {
            tls = tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            ));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls config");
        let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
        loop {
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("cannot connect to {addr} over TLS: {e:?}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_participants_take_saga_calls_only_from_the_orchestrator() {
    use microshop_proto::{
        inventory::v1::inventory_service_client::InventoryServiceClient,
        orchestrator::v1::checkout_service_client::CheckoutServiceClient,
    };
    use microshop_tests::{any_port, listen};
    use orchestrator::{OrchestratorConfig, ParticipantUrls};
    use tokio::sync::watch;

    let pki = Pki::new();
    let data = tempfile::tempdir().expect("a data directory");
    let (stop, stopped) = watch::channel(false);
    let until = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let inv_l = listen(any_port()).await;
    let loy_l = listen(any_port()).await;
    let ord_l = listen(any_port()).await;
    let orch_l = listen(any_port()).await;
    let (inv_a, loy_a, ord_a, orch_a) = (
        inv_l.local_addr().expect("addr"),
        loy_l.local_addr().expect("addr"),
        ord_l.local_addr().expect("addr"),
        orch_l.local_addr().expect("addr"),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let args = pki.server_args(data.path(), "participant");
    tasks.spawn(inventory_svc::run(
        inv_l,
        inventory_svc::InventoryConfig::new(args.clone()),
        until(),
    ));
    tasks.spawn(loyalty_svc::run(
        loy_l,
        loyalty_svc::LoyaltyConfig::new(args.clone()),
        until(),
    ));
    tasks.spawn(order_svc::run(
        ord_l,
        order_svc::OrderConfig::new(args),
        until(),
    ));
    let mut config = OrchestratorConfig::new(
        pki.server_args(data.path(), "orchestrator"),
        ParticipantUrls {
            inventory: format!("https://{inv_a}"),
            loyalty: format!("https://{loy_a}"),
            order: format!("https://{ord_a}"),
        },
    );
    config.engine = test_engine();
    tasks.spawn(orchestrator::run(orch_l, config, until()));

    // Admin RPCs need no client certificate (authentication is off here).
    let mut inventory = InventoryServiceClient::new(pki.channel(inv_a, None).await);
    inventory
        .put_product(inv::PutProductRequest {
            sku: "TSHIRT".into(),
            name: "Cotton T-shirt".into(),
            unit_price: 150_000,
            stock: 10,
        })
        .await
        .expect("put a product over TLS");

    // The orchestrator's saga calls go through, over mTLS.
    let mut checkout = CheckoutServiceClient::new(pki.channel(orch_a, None).await);
    checkout
        .place_order(order_request("m-1", "alice", &[("TSHIRT", 1)], "", 0))
        .await
        .expect("the saga runs over mTLS");

    // A direct saga call without the orchestrator's certificate is refused:
    // without a client certificate, and with another one from the same CA.
    let reserve = || inv::ReserveStockRequest {
        saga_id: "forged-saga".into(),
        items: vec![inv::StockItem {
            sku: "TSHIRT".into(),
            quantity: 9,
        }],
    };
    for client in [None, Some("rogue")] {
        let mut direct = InventoryServiceClient::new(pki.channel(inv_a, client).await);
        expect_error(
            direct.reserve_stock(reserve()).await,
            Code::PermissionDenied,
            Reason::PermissionDenied,
        );
    }
    // The stock is untouched by the refused calls: 10 - 1 sold-pending.
    let product = inventory
        .get_product(inv::GetProductRequest {
            sku: "TSHIRT".into(),
        })
        .await
        .expect("get the product")
        .into_inner();
    assert_eq!(product.available, 9, "{product:?}");

    let _ = stop.send(true);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("no panic").expect("no service failed");
    }
}
