//! Prints loom-core's canonical metadata for test vectors, so other languages can check that
//! their calls into the codec write byte-identical metadata.
//!
//! Input (file argument): a JSON array of metadata objects (string → string).
//! Output: one line per vector, the metadata after `Envelope::from_metadata(..).to_metadata()`
//! as compact JSON with sorted keys.
use std::collections::{BTreeMap, HashMap};

use loom_core::envelope::Envelope;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: envelope_vectors VECTORS.json")?;
    let vectors: Vec<HashMap<String, String>> =
        serde_json::from_str(&std::fs::read_to_string(path)?)?;
    for md in vectors {
        let out: BTreeMap<String, String> = Envelope::from_metadata(&md)
            .to_metadata()
            .into_iter()
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
