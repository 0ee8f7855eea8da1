//! `/v1/embeddings`: deterministic unit vectors, as floats or base64.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{inputs, to_json, DEFAULT_MODEL};
use crate::handler::Reply;

const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
const MAX_EMBEDDING_DIMENSIONS: usize = 4096;

#[derive(Deserialize)]
pub(super) struct EmbeddingRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: EmbeddingVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
    Float(Vec<f32>),
    /// Little-endian `f32`s, base64-encoded (`encoding_format: "base64"`,
    /// which OpenAI's Python SDK asks for by default).
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

pub(super) fn embeddings(request: EmbeddingRequest) -> Result<Reply, String> {
    let input = request
        .input
        .as_ref()
        .ok_or("'input' is a required property")?;
    let inputs = inputs(input, "input")?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(format!(
                "Invalid value for 'encoding_format': {other:?}; expected 'float' or 'base64'"
            ))
        }
    };
    let dimensions = request.dimensions.unwrap_or(DEFAULT_EMBEDDING_DIMENSIONS);
    if !(1..=MAX_EMBEDDING_DIMENSIONS).contains(&dimensions) {
        return Err(format!(
            "Invalid value for 'dimensions': {dimensions}; expected 1..={MAX_EMBEDDING_DIMENSIONS}"
        ));
    }
    let prompt_tokens = inputs.iter().map(|input| input.tokens).sum();
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(input.seed, dimensions);
            Embedding {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64_encode(&bytes))
                } else {
                    EmbeddingVector::Float(vector)
                },
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model: request.model.as_deref().unwrap_or(DEFAULT_MODEL),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    Ok(Reply::json(StatusCode::OK, to_json(&list)))
}

/// A unit-length vector derived from `seed` (splitmix64), so the same input
/// always embeds to the same vector.
fn embedding(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 24 bits, mapped to [-1, 1).
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::fnv1a;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(fnv1a(b"hello"), 8);
        assert_eq!(a, embedding(fnv1a(b"hello"), 8));
        assert_ne!(a, embedding(fnv1a(b"world"), 8));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn encodes_base64() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
