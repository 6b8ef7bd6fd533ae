//! Receipts: the ESC/POS one the lane prints, and the digital one behind a link.
//!
//! The link is `<base>/receipts/<sale id>?k=<key>`: `k` is the first 128 bits of
//! HMAC-SHA256(receipt key, sale id), in hex, so a receipt cannot be found by guessing sale ids.
//! The receipt key is 32 random bytes the gateway makes once (`receipt.key` in its data
//! directory, mode 0600).
use std::io::Write;
use std::path::Path;

use aisle_drivers::printer::{Quantity, Receipt, ReceiptLine};
use aisle_protocol::sync::SaleRecord;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The file the receipt key lives in.
pub const RECEIPT_KEY_FILE: &str = "receipt.key";

/// The gateway's receipt key: read, or made once (written atomically, mode 0600).
pub fn receipt_key(data_dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = data_dir.join(RECEIPT_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not 32 bytes: remove it to make a new one (old receipt links stop working)", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            let tmp = data_dir.join(format!("{RECEIPT_KEY_FILE}.tmp"));
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

fn mac(key: &[u8; 32], sale_id: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(b"aisle-receipt:");
    m.update(sale_id.as_bytes());
    m
}

/// The link key of a sale's receipt.
pub fn link_key(key: &[u8; 32], sale_id: &str) -> String {
    hex::encode(&mac(key, sale_id).finalize().into_bytes()[..16])
}

/// Whether `k` is the link key of `sale_id` (constant time).
pub fn check_link_key(key: &[u8; 32], sale_id: &str, k: &str) -> bool {
    let Ok(bytes) = hex::decode(k) else {
        return false;
    };
    bytes.len() == 16 && mac(key, sale_id).verify_truncated_left(&bytes).is_ok()
}

/// The printed receipt of a committed sale. `names` gives each line's product name.
pub fn printed(
    record: &SaleRecord,
    names: &[String],
    header: &[String],
    payment_label: String,
    footer: Vec<String>,
    link: Option<String>,
) -> Receipt {
    let lines = record
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let name = names.get(i).cloned().unwrap_or_else(|| l.gtin.to_string());
            let name = match l.discount {
                Some(d) => format!("{name} (member -{})", d.decimal()),
                None => name,
            };
            ReceiptLine {
                name,
                quantity: match l.weight_g {
                    Some(g) => Quantity::Grams(g),
                    None => Quantity::Count(l.qty),
                },
                unit_price: l.unit_price,
                amount: l.line_total,
            }
        })
        .collect();
    Receipt {
        header: header.to_vec(),
        lines,
        total: record.total,
        vat: Vec::new(),
        payments: vec![(payment_label, record.total)],
        footer,
        link,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_keys_check_and_differ_per_sale() {
        let key = [3u8; 32];
        let k = link_key(&key, "1-100");
        assert_eq!(k.len(), 32);
        assert!(check_link_key(&key, "1-100", &k));
        assert!(!check_link_key(&key, "1-101", &k));
        assert!(!check_link_key(&[4u8; 32], "1-100", &k));
        assert!(!check_link_key(&key, "1-100", "zz"));
        assert!(!check_link_key(&key, "1-100", &k[..30]));
    }

    #[test]
    fn the_receipt_key_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = receipt_key(dir.path()).unwrap();
        let b = receipt_key(dir.path()).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join(RECEIPT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(RECEIPT_KEY_FILE), b"short").unwrap();
        let e = receipt_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not 32 bytes"), "{e}");
    }
}
