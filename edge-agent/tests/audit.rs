//! The gateway's audit log records staff sign-ins and refused PINs (never the PIN), chained so
//! `audit verify` finds an edited line.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use aisle_agent::Agent;
use aisle_agent::audit::{self, action};
use aisle_agent::clock::SystemClock;
use aisle_agent::config::AgentConfig;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_ins_and_refused_pins_are_audited_without_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hash = aisle_agent::pickup::staff::hash_pin("473829").unwrap();
    let text = format!(
        "store = \"S001\"\nhub_url = \"http://127.0.0.1:{closed}\"\n\
         credential = \"gw-S001-1a2b3c4d.{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
         [pickup]\n[[pickup.staff]]\nname = \"Ana\"\npin_hash = \"{hash}\"\n",
        "ab".repeat(32),
        dir.path().display()
    );
    let config: AgentConfig = toml::from_str(&text).unwrap();
    let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    let url = format!("http://{}/v1/staff/sign-in", agent.local_addr());
    let http = reqwest::Client::new();
    for (pin, status) in [("918273", 401), ("473829", 200)] {
        let r = http
            .post(&url)
            .json(&json!({ "pin": pin }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
    agent.shutdown().await;

    let entries = audit::list(dir.path()).unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [action::STAFF_PIN_REFUSED, action::STAFF_SIGNED_IN]
    );
    assert!(
        entries[0].actor.starts_with("device:127.0.0.1"),
        "{entries:?}"
    );
    assert_eq!(entries[1].actor, "staff:Ana");
    for e in &entries {
        for field in [&e.actor, &e.action, &e.subject] {
            assert!(
                !field.contains("473829") && !field.contains("918273"),
                "{e:?}"
            );
        }
    }
    assert_eq!(audit::verify(dir.path()).unwrap().entries, 2);
}
