//! Entry points for the fuzz targets of `fuzz/` (not part of the API):
//! what discovery makes of a DNS answer and of EndpointSlice JSON.

/// Decodes `message` as a DNS response (hickory, as the resolver does) and
/// turns its SRV answers and additional addresses into nodes, as
/// [`crate::DnsSource`] does; every node URL is then normalized like a
/// discovered node's. Returns how many nodes came out.
///
/// Must not panic on any input.
#[cfg(feature = "dns")]
#[must_use]
pub fn srv_answer(message: &[u8]) -> usize {
    use crate::dns::{addresses_in, srv_node, usable_srv_records};
    use crate::{DnsSourceConfig, SrvPriorities, normalize_base_url};
    let Ok(message) = hickory_resolver::proto::op::Message::from_vec(message) else {
        return 0;
    };
    let mut config = DnsSourceConfig::new("_mlx._tcp.fuzz.internal");
    let mut count = 0;
    for priorities in [SrvPriorities::LowestOnly, SrvPriorities::All] {
        config.priorities = priorities;
        for record in usable_srv_records(&message.answers, priorities) {
            let addresses = addresses_in(&message.additionals, &record.target);
            let Some((ip, _ttl)) = addresses.first() else {
                continue;
            };
            let node = srv_node(&record, *ip, &config, "_mlx._tcp.fuzz.internal");
            let spec = &node.spec;
            // An address and a port always make a valid base URL.
            if let Err(e) = normalize_base_url(&spec.id, &spec.url) {
                panic!(
                    "SRV node {} has an invalid URL {:?}: {e}",
                    spec.id, spec.url
                );
            }
            count += 1;
        }
    }
    count
}

/// Decodes `json` as one EndpointSlice or an array of them and turns them
/// into nodes, as [`crate::KubernetesSource`] does (port named `http`, then
/// any single port); every node URL is normalized like a discovered
/// node's. Returns how many nodes came out.
///
/// Must not panic on any input.
#[cfg(feature = "k8s")]
#[must_use]
pub fn endpoint_slices(json: &[u8]) -> usize {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use crate::{KubernetesSourceConfig, normalize_base_url};
    let slices: Vec<EndpointSlice> = match serde_json::from_slice::<Vec<EndpointSlice>>(json) {
        Ok(slices) => slices,
        Err(_) => match serde_json::from_slice::<EndpointSlice>(json) {
            Ok(slice) => vec![slice],
            Err(_) => return 0,
        },
    };
    let mut count = 0;
    for port_name in [Some("http".to_owned()), None] {
        let mut config = KubernetesSourceConfig::new("mlx");
        config.port_name = port_name;
        for node in crate::k8s::nodes_from_slices(&slices, &config, "default") {
            let spec = &node.spec;
            // Endpoint addresses are not validated by the API server for
            // us: a malformed one must give an error, never a panic.
            let _ = normalize_base_url(&spec.id, &spec.url);
            count += 1;
        }
    }
    count
}
