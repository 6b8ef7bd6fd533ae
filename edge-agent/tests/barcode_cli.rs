//! `aisle-agent barcode parse`: what technicians see, and the exit code on a bad scan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn parse(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
        .arg("barcode")
        .arg("parse")
        .args(args)
        .output()
        .expect("run aisle-agent");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_what_a_scan_means_and_refuses_bad_ones_with_the_reason() {
    let (ok, j, _) = parse(&["]E02011122912346"]);
    assert!(ok);
    assert_eq!(j["price"]["minor"], 1234);
    assert_eq!(j["price"]["currency"], "GBP");
    assert_eq!(j["item"], "02011122000005");

    let (ok, j, _) = parse(&["]d20109501101531000\\x1d3103001250<GS>10L1"]);
    assert!(ok, "{j}");
    assert_eq!(j["weight_g"], 1250);
    assert_eq!(j["batch"], "L1");

    let (ok, j, err) = parse(&["2011122812349"]);
    assert!(!ok);
    assert_eq!(j, serde_json::Value::Null);
    assert!(
        err.contains("bad price/weight check digit: expected 9, found 8"),
        "{err}"
    );
    let (ok, _, err) = parse(&["]C110ABC", "--separator", "A"]);
    assert!(!ok);
    assert!(err.contains("separator"), "{err}");
}

#[test]
fn layouts_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layouts.toml");
    std::fs::write(
        &file,
        "country = \"SE (test)\"\ncurrency = \"SEK\"\n[[layout]]\nprefixes = [\"23\"]\nlayout = \"FFIIIIVWWWWWC\"\n",
    )
    .unwrap();
    let (ok, j, err) = parse(&["2312346146853", "--layouts", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(j["weight_g"], 14685);
    assert_eq!(j["variable"]["measure"]["weight_grams"], 14685);
    std::fs::write(
        &file,
        "currency = \"SEK\"\n[[layout]]\nprefixes = [\"23\"]\nlayout = \"FF\"\n",
    )
    .unwrap();
    let (ok, _, err) = parse(&["2312346146853", "--layouts", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("13 characters"), "{err}");
}
