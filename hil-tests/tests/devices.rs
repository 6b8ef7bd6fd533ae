//! `aisle-agent devices scan` against simulated devices on real pseudo-terminals (the MT-SICS,
//! Toledo and NCI scale simulators, the shelf-label access point simulator, a silent port) and a
//! real Mosquitto; `devices add` against a private Mosquitto started with the files it wrote: a
//! device publishes to its own topic and is refused on another device's; a camera confirmed with
//! its vendor and zone is counted by an agent started on the configuration `devices add` wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use aisle_drivers::scale::{ScaleProtocol, WeightUnit};
use aisle_hil::esl_sim::{EslSim, EslSimConfig};
use aisle_hil::harness::{binary, free_port, wait_for};
use aisle_hil::mqtt::Subscriber;
use aisle_hil::scale_sim::{ScaleSim, ScaleSimConfig};
use aisle_protocol::esl::LabelId;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use serialport::SerialPort;

/// A minimal agent configuration for store S001 (the devices commands read store and topics).
fn agent_config(dir: &Path, broker: Option<(&str, &str)>) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    let mut text = format!(
        "store = \"S001\"\nhub_url = \"http://127.0.0.1:9\"\ncredential = \"gw-S001-1a2b3c4d.{}\"\n\
         data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
        "ab".repeat(32),
        dir.display()
    );
    if let Some((b, prefix)) = broker {
        text.push_str(&format!(
            "\n[footfall]\nmqtt = \"{b}\"\ntopic_prefix = \"{prefix}\"\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn agent(args: &[&str]) -> Output {
    Command::new(binary("aisle-agent").unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A Mosquitto of our own reading the password and ACL files `devices add` wrote.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    async fn start(dir: &Path, files: &Path) -> Broker {
        Broker::start_on(dir, files, free_port().unwrap()).await
    }

    async fn start_on(dir: &Path, files: &Path, port: u16) -> Broker {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npassword_file {}\nacl_file {}\n\
                 persistence false\nuser root\nlog_dest file {}\n",
                files.join("passwd").display(),
                files.join("acl").display(),
                dir.join("mosquitto.log").display()
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("mosquitto is installed (scripts/lib/services.sh)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        wait_for("mosquitto to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await
        .unwrap();
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device's MQTT connection; `Err` with the broker's refusal.
async fn device(
    addr: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, tokio::task::JoinHandle<()>), ConnectReturnCode> {
    let (host, port) = addr.split_once(':').unwrap();
    let id = format!("dev-{}", rand::random::<u32>());
    let mut options = MqttOptions::new(id, host, port.parse().unwrap());
    if let Some((u, p)) = login {
        options.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(options, 16);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(ack.code);
                }
                break;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("connecting to {addr}: {e}"),
        }
    }
    let task = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    Ok((client, task))
}

/// `devices add`'s printed credential.
fn added(out: &Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    (field("user:"), field("password:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mqtt_device_publishes_only_to_its_own_topic_on_a_real_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), None);
    let files = dir.path().join("mosquitto");
    let add = |id: &str| {
        agent(&[
            "devices",
            "add",
            "--config",
            config.to_str().unwrap(),
            "--kind",
            "camera",
            "--id",
            id,
            "--mosquitto-dir",
            files.to_str().unwrap(),
        ])
    };
    let (user_a, pass_a) = added(&add("door-1"));
    let (user_b, pass_b) = added(&add("door-2"));
    assert_eq!(user_a, "camera-door-1");
    assert_eq!(user_b, "camera-door-2");
    let stored = std::fs::read_to_string(files.join("passwd")).unwrap();
    assert!(!stored.contains(&pass_a) && !stored.contains(&pass_b));
    let audited = aisle_agent::audit::list(dir.path()).unwrap();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited[1].subject.contains("camera-door-2 may publish to"));
    let audit_text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!audit_text.contains(&pass_a) && !audit_text.contains(&pass_b));

    let broker = Broker::start(dir.path(), &files).await;
    // The agent's side: no login, reads every device of the store.
    let mut agent_sub = Subscriber::start(&broker.addr, "aisle/v1/S001/#", true)
        .await
        .unwrap();
    let (a, _task_a) = device(&broker.addr, Some((&user_a, &pass_a)))
        .await
        .unwrap();
    let own = "aisle/v1/S001/camera/door-1/counts";
    let other = "aisle/v1/S001/camera/door-2/counts";
    for (topic, payload) in [(own, "a-own"), (other, "a-forged"), (own, "a-end")] {
        a.publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let first = agent_sub.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (first.topic.as_str(), first.text().as_str()),
        (own, "a-own")
    );
    // Messages of one connection arrive in order: the forged one would come before a-end.
    let next = agent_sub.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (next.topic.as_str(), next.text().as_str()),
        (own, "a-end"),
        "device A's message on device B's topic reached the agent"
    );

    // Device B publishes on its own topic; no login publishes nothing; a wrong password is
    // refused at the door.
    let (b, _task_b) = device(&broker.addr, Some((&user_b, &pass_b)))
        .await
        .unwrap();
    let (anon, _task_anon) = device(&broker.addr, None).await.unwrap();
    anon.publish(other, QoS::AtLeastOnce, false, "anonymous")
        .await
        .unwrap();
    b.publish(other, QoS::AtLeastOnce, false, "b-own")
        .await
        .unwrap();
    let got = agent_sub.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((got.topic.as_str(), got.text().as_str()), (other, "b-own"));
    let refused = device(&broker.addr, Some((&user_a, &pass_b))).await;
    assert!(
        matches!(
            refused,
            Err(ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized)
        ),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(
        agent_sub.next(Duration::from_millis(500)).await.is_err(),
        "nothing else reached the agent"
    );
    agent_sub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_scan_names_each_scale_protocol_the_access_point_and_the_mqtt_devices() {
    let dir = tempfile::tempdir().unwrap();
    let broker = aisle_hil::mqtt::broker();
    let prefix = aisle_hil::mqtt::random_prefix();
    let config = agent_config(dir.path(), Some((&broker, &prefix)));
    let topic = format!("{prefix}/S001/camera/door-9/status");
    let mt = ScaleSim::start(ScaleSimConfig::new(ScaleProtocol::MtSics)).unwrap();
    let toledo = ScaleSim::start(ScaleSimConfig::new(ScaleProtocol::Toledo8217 {
        unit: WeightUnit::Kg,
    }))
    .unwrap();
    let nci = ScaleSim::start(ScaleSimConfig::new(ScaleProtocol::Nci)).unwrap();
    let ap = EslSim::start(EslSimConfig::new(LabelId(0x00A1_0001), 1)).unwrap();
    let (_silent_master, silent) = serialport::TTYPort::pair().unwrap();
    let silent_path = silent.name().unwrap();

    // A camera publishes for as long as the scan runs (the serial probes come first and take
    // longer on a loaded machine); it is stopped when the scan is done.
    let (camera, _task) = device(&broker, None).await.unwrap();
    let publisher = tokio::spawn(async move {
        for i in 0..600 {
            let _ = camera
                .publish(topic.as_str(), QoS::AtMostOnce, false, format!("{i}"))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let ports = [
        mt.path(),
        toledo.path(),
        nci.path(),
        ap.path().to_string(),
        silent_path.clone(),
    ];
    let mut args = vec![
        "devices".to_string(),
        "scan".into(),
        "--config".into(),
        config.display().to_string(),
        "--mqtt-seconds".into(),
        "2".into(),
        "--json".into(),
    ];
    for p in &ports {
        args.push("--port".into());
        args.push(p.clone());
    }
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&args)
    })
    .await
    .unwrap();
    publisher.abort();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    let kinds: Vec<&str> = report["serial"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "mt_sics_scale",
            "toledo_scale",
            "nci_scale",
            "esl_access_point",
            "silent"
        ],
        "{text}"
    );
    assert_eq!(report["serial"][4]["path"], silent_path.as_str());
    let mqtt = report["mqtt"]["Ok"].as_array().expect("MQTT listed");
    let camera = mqtt
        .iter()
        .find(|d| d["kind"] == "camera" && d["id"] == "door-9")
        .unwrap_or_else(|| panic!("door-9 not listed: {text}"));
    assert!(camera["messages"].as_u64().unwrap() >= 5, "{text}");
    drop(silent);
}

/// `aisle-agent run` as a process, killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_confirmed_with_devices_add_is_counted_by_the_agent_started_on_that_config() {
    use aisle_hil::camera_sim::{CameraModel, CameraProfile, Vendor, now_ms};

    let dir = tempfile::tempdir().unwrap();
    let listen = free_port().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"S001\"\nhub_url = \"http://127.0.0.1:9\"\ncredential = \"gw-S001-1a2b3c4d.{}\"\n\
             data_dir = \"{}\"\nlisten = \"127.0.0.1:{listen}\"\n",
            "ab".repeat(32),
            dir.path().display()
        ),
    )
    .unwrap();
    let files = dir.path().join("mosquitto");
    let broker_port = free_port().unwrap();
    let broker_addr = format!("127.0.0.1:{broker_port}");
    let out = agent(&[
        "devices",
        "add",
        "--config",
        config.to_str().unwrap(),
        "--kind",
        "camera",
        "--id",
        "door-1",
        "--vendor",
        "axis",
        "--zone",
        "Main entrance",
        "--broker",
        &broker_addr,
        "--mosquitto-dir",
        files.to_str().unwrap(),
    ]);
    let (user, password) = added(&out);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[[footfall.cameras]]"), "{printed}");
    assert!(printed.contains("restart the agent"), "{printed}");

    // Mosquitto with the files written, then the agent with the configuration as written.
    let broker = Broker::start_on(dir.path(), &files, broker_port).await;
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(binary("aisle-agent").unwrap())
            .args(["run", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{listen}");
    wait_for("the agent's API", Duration::from_secs(20), || async {
        aisle_hil::footfall::cameras(&http, &url).await.ok()
    })
    .await
    .unwrap();

    // The camera publishes with its own credential; the agent takes its counts.
    let (camera, _task) = device(&broker.addr, Some((&user, &password)))
        .await
        .unwrap();
    let mut model = CameraModel::new(CameraProfile::new(Vendor::Axis, "door-1")).unwrap();
    let topic = "aisle/v1/S001/camera/door-1/counts";
    let heard = wait_for("the agent to hear door-1", Duration::from_secs(30), || {
        let now = now_ms();
        model.walk(1, now);
        let payload = model.payload(now).ok();
        let camera = camera.clone();
        let (http, url) = (http.clone(), url.clone());
        async move {
            if let Some(p) = payload {
                camera
                    .publish(topic, QoS::AtLeastOnce, false, p.bytes)
                    .await
                    .ok()?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let v = aisle_hil::footfall::cameras(&http, &url).await.ok()?;
            v["cameras"]
                .as_array()?
                .iter()
                .find(|c| c["id"] == "door-1" && c["accepted"].as_u64() >= Some(1))
                .cloned()
        }
    })
    .await
    .unwrap();
    assert_eq!(heard["zone"], "Main entrance", "{heard}");
}
