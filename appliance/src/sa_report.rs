//! `roamgate sa`: what `swanctl --list-sas` shows, from the two views a gateway serves. The
//! control plane's IKE view gives each IKE SA (state, SPIs, addresses, NAT, identities,
//! proposal, ages and countdowns) with its CHILD_SAs; the data plane's SA list gives each SA's
//! counters and last use. [`report`] joins them by SPI into one JSON document of a stable
//! shape (`roamgate sa --json`), [`text`] renders that document as swanctl-like text.
//!
//! Owns: the join, the age correction (the IKE view is rebuilt when something changes, so its
//! times are moved on by the view's age), the text layout.
//! Must never: show a key (neither view carries one); fail on a view that lacks a field (an
//! older process, or a data plane without IKE: what is missing is shown as missing).

use serde_json::{json, Map, Value};

/// The data plane's SA entry with this direction and SPI.
fn dataplane_sa<'a>(dp: &'a Value, direction: &str, spi: &str) -> Option<&'a Value> {
    dp["sas"]
        .as_array()?
        .iter()
        .find(|s| s["direction"] == direction && s["spi"] == spi)
}

/// One direction of a CHILD_SA: its SPI and what the data plane counted on it.
fn direction(dp: &Value, dir: &str, spi: &Value) -> Value {
    let spi_s = spi.as_str().unwrap_or("");
    match dataplane_sa(dp, dir, spi_s) {
        Some(s) => json!({
            "spi": spi_s,
            "bytes": s["bytes"],
            "packets": s["packets"],
            "last_use_secs": s["last_use_secs"],
            "worker": s["worker"],
            "drops": s["drops"],
        }),
        // Not (yet) installed in the data plane, or a data plane that did not answer.
        None => json!({
            "spi": spi_s, "bytes": null, "packets": null, "last_use_secs": null,
            "worker": null, "drops": {},
        }),
    }
}

/// `v` moved on by `age` seconds: ages grow, countdowns shrink (never below zero).
fn aged(v: &Value, age: u64, grows: bool) -> Value {
    match v.as_u64() {
        Some(n) if grows => n.saturating_add(age).into(),
        Some(n) => n.saturating_sub(age).into(),
        None => Value::Null,
    }
}

/// The copy of an IKE SA (or CHILD_SA) object with its times moved on by `age` seconds.
fn with_times(sa: &Value, age: u64, grows: &[&str], shrinks: &[&str]) -> Map<String, Value> {
    let mut o = sa.as_object().cloned().unwrap_or_default();
    for k in grows {
        o.insert((*k).into(), aged(&sa[*k], age, true));
    }
    for k in shrinks {
        o.insert((*k).into(), aged(&sa[*k], age, false));
    }
    o
}

/// The `roamgate sa --json` document: `gateway`; `ike_sas`, each as the IKE view has it with
/// times as of now and every CHILD_SA's `in` and `out` directions joined with the data
/// plane's counters; `static_sas`, the data plane's SAs no CHILD_SA holds; `ike_drops`.
pub fn report(dp: &Value, ike: Option<&Value>) -> Value {
    let age = ike
        .and_then(|v| v["view_age_ms"].as_u64())
        .map_or(0, |ms| ms.saturating_add(500) / 1000);
    let mut held: Vec<(String, String)> = Vec::new();
    let ike_sas: Vec<Value> = ike
        .and_then(|v| v["ike_sas"].as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|sa| {
            let mut o = with_times(sa, age, &["established_secs"], &["rekey_in_secs"]);
            let children: Vec<Value> = sa["children"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let mut co = with_times(
                        c,
                        age,
                        &["installed_secs"],
                        &["rekey_in_secs", "expire_in_secs"],
                    );
                    for (dir, key) in [("in", "spi_in"), ("out", "spi_out")] {
                        held.push((dir.into(), c[key].as_str().unwrap_or("").into()));
                        co.insert(dir.into(), direction(dp, dir, &c[key]));
                    }
                    Value::Object(co)
                })
                .collect();
            o.insert("children".into(), children.into());
            Value::Object(o)
        })
        .collect();
    let static_sas: Vec<Value> = dp["sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|s| {
            let key = (
                s["direction"].as_str().unwrap_or("").to_string(),
                s["spi"].as_str().unwrap_or("").to_string(),
            );
            !held.contains(&key)
        })
        .cloned()
        .collect();
    json!({
        "gateway": dp["gateway"],
        "ike_sas": ike_sas,
        "static_sas": static_sas,
        "ike_drops": ike.map_or(Value::Null, |v| v["ike_drops"].clone()),
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// "12s ago" / "in 30s" parts that exist.
fn times(parts: &[(&str, &Value, bool)]) -> String {
    parts
        .iter()
        .filter_map(|(what, v, ago)| {
            v.as_u64().map(|n| {
                if *ago {
                    format!("{what} {n}s ago")
                } else {
                    format!("{what} in {n}s")
                }
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn drops_suffix(d: &Value) -> String {
    match d.as_object().filter(|d| !d.is_empty()) {
        Some(d) => {
            let parts: Vec<String> = d.iter().map(|(k, n)| format!("{k}={n}")).collect();
            format!(", drops: {}", parts.join(" "))
        }
        None => String::new(),
    }
}

/// One direction's counter line, as swanctl prints it.
fn counter_line(dir: &str, d: &Value) -> String {
    let count = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let last = match d["last_use_secs"].as_u64() {
        Some(n) => format!(", {n:>5}s ago"),
        None if d["packets"].is_null() => ", not in the data plane".to_string(),
        None => String::new(),
    };
    format!(
        "    {dir:<3} {}, {:>8} bytes, {:>6} packets{last}{}",
        s(&d["spi"]),
        count(&d["bytes"]),
        count(&d["packets"]),
        drops_suffix(&d["drops"]),
    )
}

/// The report as swanctl-like text (`swanctl --list-sas`'s layout; an IKE SA is numbered by
/// its id rather than a counter).
pub fn text(r: &Value) -> String {
    let mut out = Vec::new();
    for sa in r["ike_sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let init = sa["initiator"].as_bool() == Some(true);
        let nat_unknown = sa["nat"].as_bool() == Some(true)
            && sa["nat_local"].as_bool() != Some(true)
            && sa["nat_remote"].as_bool() != Some(true);
        out.push(format!(
            "{}: #{}, {}, IKEv2, {}_i{} {}_r{}{}",
            s(&sa["connection"]),
            s(&sa["ike_sa"]),
            s(&sa["state"]),
            s(&sa["spi_i"]),
            if init { "*" } else { "" },
            s(&sa["spi_r"]),
            if init { "" } else { "*" },
            if nat_unknown { " [NAT-T]" } else { "" },
        ));
        let behind = |k: &str| {
            if sa[k].as_bool() == Some(true) {
                " [behind NAT]"
            } else {
                ""
            }
        };
        let vip = sa["virtual_ip"]
            .as_str()
            .map_or(String::new(), |v| format!(" [{v}]"));
        // The virtual IP is the client's: ours when we initiated, the peer's otherwise.
        let (local_vip, remote_vip) = if init {
            (vip.as_str(), "")
        } else {
            ("", vip.as_str())
        };
        out.push(format!(
            "  local  '{}' @ {}[{}]{}{local_vip}",
            s(&sa["local_id"]),
            s(&sa["local_host"]),
            sa["local_port"],
            behind("nat_local"),
        ));
        // As swanctl shows it: the identity the peer authenticated with by EAP.
        let eap = sa["eap_identity"]
            .as_str()
            .map_or(String::new(), |e| format!(" EAP: '{e}'"));
        out.push(format!(
            "  remote '{}' @ {}[{}]{}{eap}{remote_vip}",
            s(&sa["remote_id"]),
            s(&sa["remote_host"]),
            sa["remote_port"],
            behind("nat_remote"),
        ));
        out.push(format!("  {}", s(&sa["proposal"]["name"])));
        let t = times(&[
            ("established", &sa["established_secs"], true),
            ("rekeying", &sa["rekey_in_secs"], false),
        ]);
        if !t.is_empty() {
            out.push(format!("  {t}"));
        }
        for c in sa["children"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            out.push(format!(
                "  {}: {}, {}{}, {}:{}",
                s(&c["name"]),
                s(&c["state"]),
                s(&c["mode"]),
                if c["udp_encap"].as_bool() == Some(true) {
                    "-in-UDP"
                } else {
                    ""
                },
                s(&c["protocol"]),
                s(&c["proposal"]["name"]),
            ));
            let t = times(&[
                ("installed", &c["installed_secs"], true),
                ("rekeying", &c["rekey_in_secs"], false),
                ("expires", &c["expire_in_secs"], false),
            ]);
            if !t.is_empty() {
                out.push(format!("    {t}"));
            }
            out.push(counter_line("in", &c["in"]));
            out.push(counter_line("out", &c["out"]));
            for (side, key) in [("local ", "local_ts"), ("remote", "remote_ts")] {
                let ts: Vec<&str> = c[key]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(s)
                    .collect();
                out.push(format!("    {side} {}", ts.join(" ")));
            }
        }
    }
    let statics = r["static_sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !statics.is_empty() {
        out.push(format!("static SAs ({}):", s(&r["gateway"])));
        for sa in statics {
            let t = times(&[
                ("installed", &sa["installed_secs"], true),
                ("last use", &sa["last_use_secs"], true),
            ]);
            out.push(format!(
                "  {:<14} {:<3} spi {:>8} worker {}: {} packets, {} bytes{}{}",
                s(&sa["name"]),
                s(&sa["direction"]),
                s(&sa["spi"]),
                sa["worker"],
                sa["packets"],
                sa["bytes"],
                if t.is_empty() {
                    String::new()
                } else {
                    format!(", {t}")
                },
                drops_suffix(&sa["drops"]),
            ));
        }
    }
    if out.is_empty() {
        out.push(format!("{}: no SAs", s(&r["gateway"])));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IKE view and a data-plane SA list as the two processes serve them.
    fn views() -> (Value, Value) {
        let child = json!({
            "name": "rw", "state": "INSTALLED", "protocol": "ESP", "mode": "TUNNEL",
            "udp_encap": true, "spi_in": "c0000001", "spi_out": "d0000001",
            "proposal": { "name": "AES_GCM_16-128/ESN" },
            "installed_secs": 10, "rekey_in_secs": 590, "expire_in_secs": null,
            "local_ts": ["10.9.0.0/24"], "remote_ts": ["10.99.0.1/32"],
        });
        let mut sa = json!({
            "ike_sa": "00000000000000a1", "connection": "rw", "state": "ESTABLISHED",
            "established": true, "initiator": false,
            "spi_i": "1111111111111111", "spi_r": "2222222222222222",
            "local_host": "192.0.2.1", "local_port": 4500,
            "remote_host": "198.51.100.7", "remote_port": 4500,
        });
        let more = json!({
            "nat": true, "nat_local": false, "nat_remote": true,
            "local_id": "gw.roamgate.test", "remote_id": "rw.roamgate.test",
            "proposal": { "name": "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519" },
            "virtual_ip": "10.99.0.1", "mobike": true,
            "established_secs": 10, "rekey_in_secs": 1,
            "children": [child],
        });
        if let (Some(o), Some(m)) = (sa.as_object_mut(), more.as_object()) {
            o.extend(m.clone());
        }
        let ike = json!({
            "view_age_ms": 2_400,
            "ike_drops": { "truncated": 1 },
            "ike_sas": [sa],
        });
        let dp = json!({ "gateway": "gw", "sas": [
            { "name": "ike", "direction": "in", "spi": "c0000001", "worker": 0,
              "packets": 5, "bytes": 420, "installed_secs": 10, "last_use_secs": 1,
              "drops": { "replay_duplicate": 2 } },
            { "name": "ike", "direction": "out", "spi": "d0000001", "worker": 0,
              "packets": 6, "bytes": 504, "installed_secs": 10, "last_use_secs": null,
              "drops": {} },
            { "name": "a-to-b", "direction": "out", "spi": "0000a001", "worker": 0,
              "packets": 7, "bytes": 700, "installed_secs": 30, "last_use_secs": 0,
              "drops": {} },
        ]});
        (ike, dp)
    }

    #[test]
    fn children_get_their_data_plane_counters_and_times_move_on_by_the_views_age() {
        let (ike, dp) = views();
        let r = report(&dp, Some(&ike));
        let sa = &r["ike_sas"][0];
        // 2.4 s old: ages +2, countdowns -2 (never below zero).
        assert_eq!(sa["established_secs"], 12);
        assert_eq!(sa["rekey_in_secs"], 0);
        let c = &sa["children"][0];
        assert_eq!(
            (c["installed_secs"].clone(), c["rekey_in_secs"].clone()),
            (json!(12), json!(588))
        );
        assert_eq!(c["expire_in_secs"], Value::Null);
        assert_eq!(c["in"]["spi"], "c0000001");
        assert_eq!(
            (c["in"]["bytes"].clone(), c["in"]["packets"].clone()),
            (json!(420), json!(5))
        );
        assert_eq!(c["in"]["last_use_secs"], 1);
        assert_eq!(
            (c["out"]["bytes"].clone(), c["out"]["packets"].clone()),
            (json!(504), json!(6))
        );
        // The static SA is what no CHILD_SA holds.
        let statics = r["static_sas"].as_array().unwrap();
        assert_eq!(statics.len(), 1);
        assert_eq!(statics[0]["name"], "a-to-b");
        assert_eq!(r["ike_drops"]["truncated"], 1);
        assert_eq!(r["gateway"], "gw");
    }

    #[test]
    fn the_text_is_laid_out_as_swanctl_lays_it_out() {
        let (ike, dp) = views();
        let t = text(&report(&dp, Some(&ike)));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[..9],
            [
                "rw: #00000000000000a1, ESTABLISHED, IKEv2, 1111111111111111_i 2222222222222222_r*",
                "  local  'gw.roamgate.test' @ 192.0.2.1[4500]",
                "  remote 'rw.roamgate.test' @ 198.51.100.7[4500] [behind NAT] [10.99.0.1]",
                "  AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
                "  established 12s ago, rekeying in 0s",
                "  rw: INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128/ESN",
                "    installed 12s ago, rekeying in 588s",
                "    in  c0000001,      420 bytes,      5 packets,     1s ago, drops: replay_duplicate=2",
                "    out d0000001,      504 bytes,      6 packets",
            ]
        );
        assert_eq!(lines[9], "    local  10.9.0.0/24");
        assert_eq!(lines[10], "    remote 10.99.0.1/32");
        assert_eq!(lines[11], "static SAs (gw):");
        assert!(
            lines[12].contains("a-to-b")
                && lines[12].contains("7 packets, 700 bytes")
                && lines[12].ends_with("installed 30s ago, last use 0s ago"),
            "{}",
            lines[12]
        );
    }

    #[test]
    fn the_eap_identity_shows_as_swanctl_shows_it() {
        let (mut ike, dp) = views();
        ike["ike_sas"][0]["eap_identity"] = json!("alice");
        let t = text(&report(&dp, Some(&ike)));
        assert!(
            t.lines().any(|l| l
                == "  remote 'rw.roamgate.test' @ 198.51.100.7[4500] [behind NAT] EAP: 'alice' [10.99.0.1]"),
            "{t}"
        );
    }

    #[test]
    fn without_ike_or_counters_what_is_missing_shows_as_missing() {
        let (ike, _) = views();
        // The data plane has not installed the CHILD_SA (yet).
        let empty = json!({ "gateway": "gw", "sas": [] });
        let r = report(&empty, Some(&ike));
        let c = &r["ike_sas"][0]["children"][0];
        assert_eq!(c["in"]["packets"], Value::Null);
        assert!(text(&r)
            .contains("    in  c0000001,        - bytes,      - packets, not in the data plane"));
        // A gateway with static SAs only.
        let (_, dp) = views();
        let r = report(&dp, None);
        assert_eq!(r["ike_sas"].as_array().unwrap().len(), 0);
        assert_eq!(r["static_sas"].as_array().unwrap().len(), 3);
        assert_eq!(text(&report(&empty, None)), "gw: no SAs");
        // An adopted IKE SA knows a NAT is there but not on which side.
        let mut adopted = ike.clone();
        adopted["ike_sas"][0]["nat_remote"] = json!(false);
        assert!(text(&report(&empty, Some(&adopted)))
            .lines()
            .next()
            .unwrap()
            .ends_with(" [NAT-T]"));
    }
}
