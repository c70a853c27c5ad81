//! docs/cloud-config.schema.json (for editors) names exactly the keys the parser knows.

use cairn_config::{cairn, document, files, update, users};
use serde_json::Value;
use std::collections::BTreeSet;

fn keys(v: &Value) -> BTreeSet<String> {
    v["properties"].as_object().unwrap_or_else(|| panic!("no properties in {v}")).keys().cloned().collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_schema_names_the_parsers_keys() {
    use cairn_config::network::cairn as net;
    let path = format!("{}/../docs/cloud-config.schema.json", std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let defs = &schema["$defs"];
    let coreos = &schema["properties"]["coreos"];
    let pairs = [
        (keys(&schema), set(document::KEYS), "top level"),
        (keys(coreos), set(document::COREOS_KEYS), "coreos"),
        (keys(&coreos["properties"]["update"]), set(update::COREOS_UPDATE_KEYS), "coreos.update"),
        (keys(&coreos["properties"]["locksmith"]), set(update::LOCKSMITH_KEYS), "coreos.locksmith"),
        (keys(&schema["properties"]["cairn"]), set(cairn::KEYS), "cairn"),
        (keys(&defs["update"]), set(update::CAIRN_UPDATE_KEYS), "cairn.update"),
        (keys(&defs["update"]["properties"]["maintenance"]), set(update::MAINTENANCE_KEYS), "maintenance"),
        (keys(&defs["window"]), set(update::WINDOW_KEYS), "maintenance.window"),
        (keys(&defs["service"]), set(&cairn::service_keys()), "cairn.services"),
        (keys(&defs["container"]), set(cairn::CONTAINER_KEYS), "cairn.containers"),
        (keys(&defs["registry"]), set(cairn_config::registry::REGISTRY_KEYS), "cairn.registries"),
        (keys(&schema["properties"]["cairn"]["properties"]["ntp"]), set(cairn_config::ntp::KEYS), "cairn.ntp"),
        (keys(&defs["network"]), set(net::KEYS), "cairn.network"),
        (
            keys(&defs["network"]["properties"]["interfaces"]["items"]),
            set(net::INTERFACE_KEYS),
            "cairn.network.interfaces",
        ),
        (
            keys(&defs["network"]["properties"]["interfaces"]["items"]["properties"]["match"]),
            set(net::MATCH_KEYS),
            "cairn.network.interfaces[].match",
        ),
        (
            keys(&defs["network"]["properties"]["interfaces"]["items"]["properties"]["routes"]["items"]),
            set(net::ROUTE_KEYS),
            "cairn.network.interfaces[].routes",
        ),
        (keys(&defs["network"]["properties"]["dns"]), set(net::DNS_KEYS), "cairn.network.dns"),
        (keys(&defs["user"]), set(users::KEYS), "users"),
        (keys(&defs["write_file"]), set(files::KEYS), "write_files"),
    ];
    for (in_schema, in_parser, what) in pairs {
        assert_eq!(in_schema, in_parser, "{what}: the schema and the parser disagree");
    }
}
