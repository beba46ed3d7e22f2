//! Part 3, in-process: Maglev rebuild time and the UPDATE codec's rate, with the agent's own
//! code (`selection::maglev::build`, `bgp::route::{announce, parse}` and the session codec).

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Instant, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use bytes::BytesMut;
use cpn_agent::{
    bgp::{
        metric_attr::{CpnMetrics, NodeScore},
        route::{self, AddPath, Encoding, Route, ServiceSid},
        speaker,
    },
    metrics::{Capacity, ComputeKind, NodeMetrics, Sample, Unit},
    selection::maglev::{self, Weighted},
};
use netgauze_bgp_pkt::BgpMessage;
use serde::Serialize;
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::stats::Spread;

#[derive(Debug, Serialize)]
pub struct Maglev {
    pub slots: u32,
    pub nodes: u32,
    /// Milliseconds per full rebuild.
    pub build_ms: Spread,
}

#[derive(Debug, Serialize)]
pub struct Codec {
    /// Bytes of one UPDATE (one service route with SID, AIGP, metrics, link bandwidth).
    pub update_bytes: usize,
    /// Thousands of UPDATEs per second, per round.
    pub encode_k_per_s: Spread,
    pub decode_k_per_s: Spread,
}

#[derive(Debug, Serialize)]
pub struct Control {
    pub maglev: Maglev,
    pub codec: Codec,
}

/// Rebuilds a 65 537-slot ring for 100 nodes of different weights `rounds` times.
pub fn maglev(rounds: usize) -> Maglev {
    let nodes: Vec<Weighted> = (0..100u32)
        .map(|node| Weighted {
            node,
            weight: 1.0 + f64::from(node % 7),
        })
        .collect();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let ring = maglev::build(maglev::DEFAULT_RING_SIZE, &nodes);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(ring.len(), maglev::DEFAULT_RING_SIZE as usize);
    }
    Maglev {
        slots: maglev::DEFAULT_RING_SIZE,
        nodes: 100,
        build_ms: Spread::of(&times),
    }
}

pub fn sample_route(i: u32) -> Route {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let total = Sample::nominal(2e12, Unit::OpsPerSecond, t);
    Route {
        prefix: IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 1)).into(),
        path_id: i,
        next_hop: Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2),
        service: Some(ServiceSid {
            sid: Ipv6Addr::new(0xfc00, 1, 0, 0, 0, 0, 0, 0xd6),
            behavior: cpn_common::maps::Behavior::EndDt6.code_point(),
        }),
        aigp: Some(2500),
        metrics: Some(CpnMetrics {
            node: format!("edge{i}"),
            normalisation: "cpn-norm-v1".into(),
            metrics: NodeMetrics {
                capacity: vec![(ComputeKind::Cpu, Capacity { total, free: total })],
                ..NodeMetrics::default()
            },
            score: Some(NodeScore {
                computing: 0.7,
                l2: 0.8,
            }),
        }),
        link_bandwidth: Some(2e12),
        as_path: vec![4_200_000_001],
        originator_id: None,
        cluster_list: Vec::new(),
    }
}

/// Encodes and decodes `per_round` UPDATEs per round with the codec a session uses.
#[expect(clippy::cast_precision_loss, reason = "message counts fit f64")]
pub fn codec(rounds: usize, per_round: usize) -> Result<Codec> {
    let encoding = Encoding {
        metric_code: 255,
        add_path: AddPath::BOTH,
        local_asn: 4_200_000_001,
        internal: false,
    };
    let routes: Vec<Route> = (0..u32::try_from(per_round)?).map(sample_route).collect();
    let mut codec = speaker::codec(AddPath::BOTH, encoding.metric_code);
    let (mut encode, mut decode) = (Vec::new(), Vec::new());
    let mut update_bytes = 0;
    for _ in 0..rounds {
        let mut wire = BytesMut::new();
        let started = Instant::now();
        for route in &routes {
            codec
                .encode(route::announce(route, encoding), &mut wire)
                .context("encoding an UPDATE")?;
        }
        encode.push(per_round as f64 / started.elapsed().as_secs_f64() / 1e3);
        update_bytes = wire.len() / per_round;
        let started = Instant::now();
        let mut learned = 0;
        while let Some((message, _)) = codec.decode(&mut wire).context("decoding an UPDATE")? {
            if let BgpMessage::Update(update) = message {
                learned += route::parse(&update, encoding.metric_code).announced.len();
            }
        }
        decode.push(per_round as f64 / started.elapsed().as_secs_f64() / 1e3);
        anyhow::ensure!(
            learned == per_round,
            "decoded {learned} of {per_round} routes"
        );
    }
    Ok(Codec {
        update_bytes,
        encode_k_per_s: Spread::of(&encode),
        decode_k_per_s: Spread::of(&decode),
    })
}
