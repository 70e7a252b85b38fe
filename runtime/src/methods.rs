//! The gRPC methods a server knows, so that a request path, which any
//! caller can make up, never becomes a metric label, a span name or a span
//! attribute by itself.
//!
//! The methods come from the protobuf descriptor sets the binary embeds
//! (the ones reflection serves, and reflection's own), so they cannot drift
//! from the code; which of them a given server answers comes from the
//! services it registers ([`Services`], by each generated server's
//! `NamedService::NAME`). A path outside that set is counted and traced as
//! service `_OTHER`, method `_OTHER`, as the OpenTelemetry RPC conventions
//! prescribe for methods the server does not know: a loop of calls to
//! made-up methods then adds one series, not one per path.

use std::{collections::HashMap, convert::Infallible, sync::Arc, sync::OnceLock};

use prost::Message;
use tonic::{
    body::Body,
    codegen::http::{Request, Response},
    server::NamedService,
    service::Routes,
};
use tower::Service;

/// The service and method of every call to a method the server does not
/// register (OpenTelemetry RPC conventions).
pub const OTHER: &str = "_OTHER";

/// The descriptor sets reflection serves: every microshop service, health,
/// and the error details (which define no service).
pub const REFLECTED_DESCRIPTOR_SETS: &[&[u8]] = &[
    microshop_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// Every method of every descriptor set the binary embeds, by path.
struct Table {
    /// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
    by_path: HashMap<String, (String, String)>,
}

impl Table {
    fn build() -> Self {
        let sets = REFLECTED_DESCRIPTOR_SETS.iter().copied().chain([
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        let mut by_path = HashMap::new();
        for set in sets {
            // Generated at build time: a set that does not decode is a
            // broken build, not a runtime condition.
            let set = prost_types::FileDescriptorSet::decode(set)
                .expect("an embedded file descriptor set decodes");
            for file in set.file {
                let package = file.package().to_owned();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        by_path.insert(
                            format!("/{full}/{}", method.name()),
                            (full.clone(), method.name().to_owned()),
                        );
                    }
                }
            }
        }
        Self { by_path }
    }

    /// The (service, method) of a path some descriptor defines.
    fn get(&'static self, path: &str) -> Option<(&'static str, &'static str)> {
        self.by_path
            .get(path)
            .map(|(service, method)| (service.as_str(), method.as_str()))
    }

    fn defines_service(&self, service: &str) -> bool {
        self.by_path.values().any(|(s, _)| s == service)
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::build)
}

/// The (service, method) labels of a call to `path` from a client of the
/// mesh: any method some embedded descriptor defines, else `_OTHER`.
pub fn client_names(path: &str) -> (&'static str, &'static str) {
    table().get(path).unwrap_or((OTHER, OTHER))
}

/// The methods one server answers: those of the services it registers.
#[derive(Clone, Debug)]
pub struct KnownMethods {
    services: Arc<[&'static str]>,
}

impl KnownMethods {
    /// The methods of `services` (fully-qualified gRPC service names).
    pub fn of_services(services: &[&'static str]) -> Self {
        Self {
            services: services.into(),
        }
    }

    /// The (service, method) labels of a call to `path`: its own when the
    /// server registers that method, else `_OTHER` for both.
    pub fn names(&self, path: &str) -> (&'static str, &'static str) {
        match table().get(path) {
            Some((service, method)) if self.services.contains(&service) => (service, method),
            _ => (OTHER, OTHER),
        }
    }

    /// Registered services no embedded descriptor defines: every call to
    /// them would count as `_OTHER` (the server warns at start).
    pub fn undescribed(&self) -> Vec<&'static str> {
        let table = table();
        self.services
            .iter()
            .copied()
            .filter(|s| !table.defines_service(s))
            .collect()
    }
}

/// The gRPC services one server routes, with their names: tonic's
/// [`Routes`] keeps no names, and the names decide which calls get labels
/// of their own.
#[derive(Clone, Debug, Default)]
pub struct Services {
    routes: Routes,
    names: Vec<&'static str>,
}

impl Services {
    /// Routes `service` (a generated server).
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self::default().add_service(service)
    }

    /// Routes one more service.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// The names of the services routed, in the order added.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The methods these services answer.
    pub fn known_methods(&self) -> KnownMethods {
        KnownMethods::of_services(&self.names)
    }

    /// The routes, for the transport.
    pub fn into_routes(self) -> Routes {
        self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVENTORY: &str = "microshop.inventory.v1.InventoryService";
    const HEALTH: &str = "grpc.health.v1.Health";

    #[test]
    fn only_the_methods_of_registered_services_keep_their_names() {
        let known = KnownMethods::of_services(&[INVENTORY, HEALTH]);
        assert_eq!(
            known.names("/microshop.inventory.v1.InventoryService/ReserveStock"),
            (INVENTORY, "ReserveStock")
        );
        assert_eq!(
            known.names("/grpc.health.v1.Health/Check"),
            (HEALTH, "Check")
        );
        for path in [
            "/evil.Svc1234/M1",
            // a method the service does not have
            "/microshop.inventory.v1.InventoryService/M1",
            // a method of a service this server does not register
            "/microshop.order.v1.OrderService/GetOrder",
            "",
            "/",
            "no-slash",
        ] {
            assert_eq!(known.names(path), (OTHER, OTHER), "{path}");
        }
        // Clients call only what some descriptor defines.
        assert_eq!(
            client_names("/microshop.order.v1.OrderService/GetOrder"),
            ("microshop.order.v1.OrderService", "GetOrder")
        );
        assert_eq!(client_names("/evil.Svc/M"), (OTHER, OTHER));
    }

    #[test]
    fn every_microshop_service_health_and_reflection_are_described() {
        let services = [
            microshop_proto::inventory::v1::inventory_service_server::SERVICE_NAME,
            microshop_proto::loyalty::v1::loyalty_service_server::SERVICE_NAME,
            microshop_proto::order::v1::order_service_server::SERVICE_NAME,
            microshop_proto::orchestrator::v1::checkout_service_server::SERVICE_NAME,
            microshop_proto::orchestrator::v1::saga_admin_service_server::SERVICE_NAME,
            HEALTH,
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        assert!(
            KnownMethods::of_services(&services)
                .undescribed()
                .is_empty(),
            "{:?}",
            KnownMethods::of_services(&services).undescribed()
        );
        assert_eq!(
            KnownMethods::of_services(&["t.Undescribed"]).undescribed(),
            ["t.Undescribed"]
        );
    }
}
