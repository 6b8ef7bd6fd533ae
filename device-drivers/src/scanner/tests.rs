use super::*;
use time::macros::date;

const TODAY: Date = date!(2026 - 12 - 05);

fn plain() -> ScanConfig {
    ScanConfig::new(Layouts::none(Currency::parse("EUR").unwrap()))
}

fn uk() -> ScanConfig {
    ScanConfig::new(Layouts::default_layouts().unwrap())
}

fn ok(frame: &[u8], config: &ScanConfig) -> Scan {
    parse_scan(frame, config, TODAY).unwrap_or_else(|e| panic!("{frame:?}: {e}"))
}

fn gtin(s: &str) -> Option<Gtin> {
    Some(Gtin::parse(s).unwrap())
}

fn money(minor: i64, cur: &str) -> Option<Money> {
    Some(Money::new(minor, Currency::parse(cur).unwrap()))
}

/// Every scanner vector of shared/vectors/barcodes.tsv.
#[test]
fn published_scanner_vectors() {
    let s = ok(b"]E02112345678900", &plain());
    assert_eq!(s.symbology, Symbology::Ean13);
    assert_eq!(s.gtin, gtin("02112345678900"));
    assert_eq!(s.circulation, Some(Circulation::Restricted));
    assert_eq!(
        parse_scan(b"]E02112345678901", &plain(), TODAY).unwrap_err(),
        ScanError::CheckDigit {
            expected: 0,
            found: 1
        }
    );
    let s = ok(b"]E402345673", &plain());
    assert_eq!(s.symbology, Symbology::Ean8);
    assert_eq!(s.gtin.unwrap().as_str(), "00000002345673");
    assert_eq!(s.circulation, Some(Circulation::CompanyInternal));
    let s = ok(b"]E00123601057072", &plain());
    assert_eq!(s.gtin.unwrap().as_str(), "00123601057072");
    assert_eq!(s.circulation, Some(Circulation::Global));
    // UK variable measure: price 12.34 GBP, and the wrong price check digit.
    let s = ok(b"]E02011122912346", &uk());
    assert_eq!(s.price, money(1234, "GBP"));
    assert_eq!(s.gtin, gtin("2011122912346"));
    assert_eq!(s.item, gtin("2011122000005"));
    assert_eq!(
        parse_scan(b"2011122812349", &uk(), TODAY).unwrap_err(),
        ScanError::PriceCheckDigit {
            expected: 9,
            found: 8
        }
    );
    // The first vector with the example UK layouts: 21 is a price layout there, and 7890
    // does not carry price check digit 6.
    assert!(matches!(
        parse_scan(b"]E02112345678900", &uk(), TODAY).unwrap_err(),
        ScanError::PriceCheckDigit { .. }
    ));
}

#[test]
fn gtins_of_every_length_with_and_without_aim() {
    let c = plain();
    for (frame, want) in [
        (&b"9501101531000"[..], "09501101531000"),
        (b"]E09501101531000", "09501101531000"),
        (b"]E0123601057072", "00123601057072"),
        (b"95012346", "00000095012346"),
        (b"]E495012346", "00000095012346"),
        (b"123601057072", "00123601057072"),
        (b"19501101531007", "19501101531007"),
        (b"]I119501101531007", "19501101531007"),
        (b"]e00119501101531007", "19501101531007"),
        (b"]C10109501101531000", "09501101531000"),
    ] {
        let s = ok(frame, &c);
        assert_eq!(s.gtin.unwrap().as_str(), want, "{frame:?}");
        assert_eq!(s.item, s.gtin);
    }
    for (frame, err) in [
        (&b"]E095011015310"[..], "needs 13"),
        (b"]E0950110153100a", "not digits"),
        (b"]E49501234", "needs 8"),
        (b"]E495012347", "check digit"),
        (b"9501101531001", "check digit"),
        (b"]I119501101531008", "check digit"),
        (b"", "empty"),
        (b"]E0", "empty"),
    ] {
        let e = parse_scan(frame, &c, TODAY).unwrap_err().to_string();
        assert!(e.contains(err), "{frame:?}: {e}");
    }
}

#[test]
fn circulation_by_prefix() {
    let c = plain();
    let circ = |f: &[u8]| ok(f, &c).circulation.unwrap();
    assert_eq!(circ(b"0412345678903"), Circulation::CompanyInternal);
    assert_eq!(circ(b"0212345678909"), Circulation::Restricted);
    assert_eq!(circ(b"2912345678906"), Circulation::Restricted);
    // 400-440 is GS1 Germany: a global GTIN, not company-internal.
    assert_eq!(circ(b"4012345678901"), Circulation::Global);
    assert_eq!(circ(b"]E420000004"), Circulation::CompanyInternal);
    assert_eq!(circ(b"]E495012346"), Circulation::Global);
}

#[test]
fn gs1_element_strings_fill_the_scan() {
    let c = plain();
    let s = ok(
        b"]d201095011015310001726020010LOT-7\x1d3103001255\x1d39220399\x1d21SN1",
        &c,
    );
    assert_eq!(s.symbology, Symbology::Gs1DataMatrix);
    assert_eq!(s.gtin, gtin("09501101531000"));
    assert_eq!(s.expiry, Some(date!(2026 - 02 - 28)));
    assert_eq!(s.batch.as_deref(), Some("LOT-7"));
    assert_eq!(s.weight_g, Some(1255));
    assert_eq!(s.price, money(399, "EUR"));
    assert_eq!(s.serial.as_deref(), Some("SN1"));
    assert_eq!(s.ais.len(), 6);
    assert_eq!(s.ais[1].title, "USE BY or EXPIRY");

    let s = ok(b"]Q30119501101531007\x1d3710\x1d15270500", &c);
    assert_eq!(s.count, Some(10));
    assert_eq!(s.best_before, Some(date!(2027 - 05 - 31)));
    // A pharmacy pack: NHRN after the serial.
    let s = ok(b"]d2010950110153100021ABC123\x1d714PZN-42\x1d17270100", &c);
    assert_eq!(s.serial.as_deref(), Some("ABC123"));
    assert_eq!(s.ais[2].title, "NHRN AIM");
    assert_eq!(s.expiry, Some(date!(2027 - 01 - 31)));
    // 3105: 0.12345 kg is 123 g (rounded half up).
    assert_eq!(ok(b"]C101095011015310003105012345", &c).weight_g, Some(123));
    // 393n with the store's currency (978 = EUR), and with another.
    assert_eq!(
        ok(b"]C10109501101531000393297812345", &c).price,
        money(12345, "EUR")
    );
    assert!(matches!(
        parse_scan(b"]C10109501101531000393282612345", &c, TODAY).unwrap_err(),
        ScanError::PriceCurrency { .. }
    ));
    // Three decimals cannot be charged in cents.
    assert!(matches!(
        parse_scan(b"]C1010950110153100039231234", &c, TODAY).unwrap_err(),
        ScanError::PriceDecimals { .. }
    ));
    assert_eq!(
        ok(b"]C1010950110153100039231230", &c).price,
        money(123, "EUR")
    );
    // Bad check digit inside AI 01, bad date, unknown AI.
    assert!(matches!(
        parse_scan(b"]C10109501101531001", &c, TODAY).unwrap_err(),
        ScanError::CheckDigit { .. }
    ));
    assert!(matches!(
        parse_scan(b"]C1010950110153100017261131", &c, TODAY).unwrap_err(),
        ScanError::BadDate { .. }
    ));
}

#[test]
fn substitute_separator_and_lost_gs() {
    let c = plain().with_separator(b'~').unwrap();
    let s = ok(b"]C11012~0109501101531000", &c);
    assert_eq!(s.batch.as_deref(), Some("12"));
    assert_eq!(s.gtin, gtin("09501101531000"));
    // The same scan with the GS lost: the batch swallows the GTIN and is too long.
    let e = parse_scan(b"]C110ABCDEFG0109501101531000", &c, TODAY).unwrap_err();
    assert!(
        e.to_string().contains("separator may have been lost"),
        "{e}"
    );
    // A price that lost its GS before a batch is not digits.
    let e = parse_scan(b"]C10109501101531000392239910ABC", &c, TODAY).unwrap_err();
    assert!(matches!(e, ScanError::AiNotDigits { .. }), "{e}");
    assert!(plain().with_separator(b'A').is_err());
    assert!(plain().with_separator(b'7').is_err());
    assert!(plain().with_separator(b'|').is_ok());
}

#[test]
fn without_aim_gs_or_brackets_mean_gs1() {
    let c = plain();
    let s = ok(b"10AB\x1d0109501101531000", &c);
    assert_eq!(s.symbology, Symbology::Unknown);
    assert_eq!(s.gtin, gtin("09501101531000"));
    let s = ok(b"(01)09501101531000(3103)000500(10)X", &c);
    assert_eq!(s.weight_g, Some(500));
    assert_eq!(s.batch.as_deref(), Some("X"));
}

#[test]
fn other_symbologies_are_text() {
    let c = plain();
    let s = ok(b"]Q1AISLE1.member.sig", &c);
    assert_eq!(s.symbology, Symbology::Qr);
    assert_eq!(s.text.as_deref(), Some("AISLE1.member.sig"));
    assert_eq!(s.gtin, None);
    let s = ok(b"]C0TICKET-42", &c);
    assert_eq!(s.symbology, Symbology::Code128);
    let s = ok(b"]X0whatever", &c);
    assert_eq!(s.symbology, Symbology::Other("]X0".into()));
    assert_eq!(ok(b"hello", &c).text.as_deref(), Some("hello"));
    assert_eq!(
        parse_scan(b"]Q1\xff\xfe", &c, TODAY).unwrap_err(),
        ScanError::NotText
    );
    assert_eq!(
        parse_scan(b"abc\x07", &c, TODAY).unwrap_err(),
        ScanError::NotText
    );
}

#[test]
fn variable_measure_with_configured_layouts() {
    let layouts = Layouts::from_toml(
        r#"
        currency = "SEK"
        [[layout]]
        prefixes = ["23"]
        layout = "FFIIIIVWWWWWC"
        [[layout]]
        prefixes = ["20", "21"]
        layout = "FFIIIIIIPPPPC"
        "#,
    )
    .unwrap();
    let c = ScanConfig::new(layouts);
    let s = ok(b"]E02312346146853", &c);
    assert_eq!(s.weight_g, Some(14685));
    assert_eq!(s.item, gtin("2312340000007"));
    assert_eq!(s.variable.as_ref().unwrap().prefix, "23");
    let s = ok(b"2112345612348", &c);
    assert_eq!(s.price, money(1234, "SEK"));
    assert_eq!(s.item, gtin("2112345600000"));
    // A restricted prefix without a layout is kept as it is, flagged restricted.
    let s = ok(b"2912345678906", &c);
    assert_eq!(s.variable, None);
    assert_eq!(s.circulation, Some(Circulation::Restricted));
    // UPC-A with number system 2 is EAN-13 prefix 02.
    let l = Layouts::from_toml(
        "currency = \"USD\"\n[[layout]]\nprefixes = [\"02\"]\nlayout = \"FFIIIIIVPPPPC\"",
    )
    .unwrap();
    let s = ok(b"]E0212345912348", &ScanConfig::new(l));
    assert_eq!(s.price, money(1234, "USD"));
}

#[test]
fn bounded_length() {
    let c = ScanConfig {
        max_len: 16,
        ..plain()
    };
    assert!(matches!(
        parse_scan(&[b'1'; 17], &c, TODAY).unwrap_err(),
        ScanError::TooLong { len: 17, max: 16 }
    ));
}

#[test]
fn unescape_what_technicians_type() {
    assert_eq!(unescape("10A\\x1d21B"), b"10A\x1d21B");
    assert_eq!(unescape("10A<GS>21B{gs}"), b"10A\x1d21B\x1d");
    assert_eq!(unescape("a\\\\b\\x1"), b"a\\b\\x1");
}

#[test]
fn json_for_technicians() {
    let s = ok(b"]C101095011015310001726020010L1", &plain());
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["gtin"], "09501101531000");
    assert_eq!(j["expiry"], "2026-02-28");
    assert_eq!(j["symbology"], "gs1_128");
    assert_eq!(j["ais"][2]["ai"], "10");
}

#[test]
fn typed_by_a_technician() {
    let s = parse_typed("]C1010950110153100010AB<GS>3922199", None, None, TODAY).unwrap();
    assert_eq!(s.price, money(199, "GBP"));
    let s = parse_typed("10AB|0109501101531000", None, Some('|'), TODAY).unwrap();
    assert_eq!(s.batch.as_deref(), Some("AB"));
    let s = parse_typed("(01)09501101531000(3103)000250", None, None, TODAY).unwrap();
    assert_eq!(s.weight_g, Some(250));
    assert!(matches!(
        parse_typed("9501101531001", None, None, TODAY),
        Err(TypedError::Scan(ScanError::CheckDigit { .. }))
    ));
    assert!(matches!(
        parse_typed("1", Some("currency = 1"), None, TODAY),
        Err(TypedError::Layouts(_))
    ));
    assert!(matches!(
        parse_typed("1", None, Some('A'), TODAY),
        Err(TypedError::Separator(_))
    ));
    assert!(matches!(
        parse_typed("1", None, Some('é'), TODAY),
        Err(TypedError::Separator(_))
    ));
}

proptest::proptest! {
    #[test]
    fn any_bytes_give_a_scan_or_an_error(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)
    ) {
        let _ = parse_scan(&data, &uk(), TODAY);
    }

    #[test]
    fn any_gs1_looking_bytes_never_panic(
        body in "[0-9A-Z\\x1d~()]{0,120}",
        aim in proptest::sample::select(vec!["]C1", "]d2", "]Q3", "]e0", "]E0", "]E4", "]I1", ""]),
    ) {
        let c = uk().with_separator(b'~').unwrap();
        let _ = parse_scan(format!("{aim}{body}").as_bytes(), &c, TODAY);
    }

    #[test]
    fn valid_gtins_always_parse(n in 0u64..10_000_000_000_000) {
        let g = Gtin::from_index(n).unwrap();
        let s = parse_scan(g.as_bytes(), &plain(), TODAY).unwrap();
        proptest::prop_assert_eq!(s.gtin, Some(g));
    }
}
