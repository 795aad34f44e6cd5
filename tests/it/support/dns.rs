//! A real authoritative DNS server on loopback (hickory-server) for the
//! `internal.` zone, which tests point `validation.dns_resolver` at.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, CNAME, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

/// What the zone holds, besides its SOA.
pub enum Entry {
    Txt(&'static str, String),
    Cname(&'static str, &'static str),
    A(&'static str, Ipv4Addr),
}

type Zone = InMemoryZoneHandler<hickory_server::net::runtime::TokioRuntimeProvider>;

/// A running zone that tests can add records to.
#[derive(Clone)]
pub struct DnsServer {
    pub addr: String,
    zone: Arc<Zone>,
}

impl DnsServer {
    /// Adds a CAA `issue` (or `issuewild`) record at `fqdn`: `issuer` is
    /// the issuer domain (empty: `;`, no CA) with `parameters`.
    pub async fn add_caa(&self, fqdn: &str, wild: bool, issuer: &str, parameters: &[(&str, &str)]) {
        use hickory_server::proto::rr::rdata::caa::{KeyValue, CAA};
        let name = Name::from_str(&format!("{fqdn}.")).unwrap();
        let issuer = (!issuer.is_empty()).then(|| Name::from_str(issuer).unwrap());
        let kv = parameters
            .iter()
            .map(|(k, v)| KeyValue::new(*k, *v))
            .collect();
        let caa = if wild {
            CAA::new_issuewild(false, issuer, kv)
        } else {
            CAA::new_issue(false, issuer, kv)
        };
        self.zone
            .upsert(Record::from_rdata(name, 60, RData::CAA(caa)), 2)
            .await;
    }

    /// Adds a TXT record at `fqdn` (which must end in `.internal`).
    pub async fn add_txt(&self, fqdn: &str, value: &str) {
        let name = Name::from_str(&format!("{fqdn}.")).unwrap();
        let txt = Record::from_rdata(name, 60, RData::TXT(TXT::new(vec![value.to_owned()])));
        self.zone.upsert(txt, 2).await;
    }
}

pub fn name(n: &str) -> Name {
    Name::from_str(&format!("{n}.internal.")).unwrap()
}

pub fn record(entry: Entry) -> Record {
    match entry {
        Entry::Txt(n, v) => Record::from_rdata(name(n), 60, RData::TXT(TXT::new(vec![v]))),
        Entry::Cname(n, target) => {
            Record::from_rdata(name(n), 60, RData::CNAME(CNAME(name(target))))
        }
        Entry::A(n, ip) => Record::from_rdata(name(n), 60, RData::A(A(ip))),
    }
}

/// Starts the server with `entries` (names relative to `internal.`) and
/// returns its `host:port`.
pub async fn start(entries: Vec<Entry>) -> String {
    serve(entries).await.addr
}

/// Starts the server with `entries`; records can be added later.
pub async fn serve(entries: Vec<Entry>) -> DnsServer {
    let origin = Name::from_str("internal.").unwrap();
    let mut zone = Zone::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(name("ns"), name("hostmaster"), 1, 3600, 600, 86400, 60);
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for entry in entries {
        zone.upsert_mut(record(entry), 1);
    }
    let zone = Arc::new(zone);
    let mut catalog = Catalog::new();
    let handler: Arc<dyn ZoneHandler> = zone.clone();
    catalog.upsert(origin.into(), vec![handler]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(socket);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    DnsServer {
        addr: addr.to_string(),
        zone,
    }
}
