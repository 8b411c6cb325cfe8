//! Bring your own model: a scikit-learn `IsolationForest` exported with skl2onnx, read into the
//! native Isolation Forest format, so that it is validated, packaged, signed and scored on the
//! device like a model trained here (by the agent's own scorer: no ONNX runtime on the device).
//!
//! skl2onnx writes one `TreeEnsembleRegressor` per tree (`ai.onnx.ml`), fed by a `Gather` of the
//! tree's features and answering its leaf's id, which `LabelEncoder`s map to the leaf's depth + 1
//! and to the number of training samples it holds; the rest of the graph computes
//! 2^(−mean path length / c(max_samples)). The import walks each tree from its root into the
//! native pre-order layout; a leaf's value is its depth plus c(its samples), as scikit-learn
//! counts it, and the forest's ψ is a tree's total samples, so the native score is scikit-learn's
//! `-score_samples` (checked against onnxruntime in the tests).
//!
//! The file is untrusted: a protobuf reader of the few message types it needs, bounds on
//! everything, and errors that name the node and attribute.

use std::collections::HashMap;

use impeller_core::detector::IsolationForest;
use impeller_core::detector::isolation_forest::{Tree, average_path_length};

use crate::PipelineError;

/// Trees and nodes an imported forest may have, so that a hostile file cannot ask for unbounded
/// memory or recursion.
const MAX_TREES: usize = 10_000;
const MAX_NODES: usize = 1 << 20;
const MAX_DEPTH: usize = 256;

fn bad(what: impl std::fmt::Display) -> PipelineError {
    PipelineError::Spec(format!("ONNX model: {what}"))
}

/// The Isolation Forest in an skl2onnx export, over `dim` input features.
pub fn isolation_forest(bytes: &[u8], dim: usize) -> Result<IsolationForest, PipelineError> {
    let model = Fields::parse(bytes).map_err(|e| bad(format!("not an ONNX model ({e})")))?;
    let graph = model.message(7).map_err(bad)?.ok_or_else(|| bad("no graph"))?;
    let mut nodes = Vec::new();
    for n in graph.messages(1).map_err(bad)? {
        nodes.push(Node::parse(&n).map_err(bad)?);
    }
    // Integer constants: initializers, or Constant nodes (whose tensor takes the output's name).
    let mut constants = HashMap::new();
    for t in graph.messages(5).map_err(bad)? {
        if let Some((name, values)) = int_tensor(&t).map_err(bad)? {
            constants.insert(name, values);
        }
    }
    for n in nodes.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(value)) = (n.outputs.first(), n.attributes.get("value"))
            && let Some(t) = value.message(5).map_err(bad)?
            && let Some((_, values)) = int_tensor(&t).map_err(bad)?
        {
            constants.insert(out.clone(), values);
        }
    }
    let input = {
        let inputs = graph.messages(11).map_err(bad)?;
        let first = inputs.first().ok_or_else(|| bad("the graph has no input"))?;
        first.string(1).map_err(bad)?.unwrap_or_default()
    };
    let producer: HashMap<&str, &Node> =
        nodes.iter().flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n))).collect();
    let consumers =
        |name: &str| -> Vec<&Node> { nodes.iter().filter(|n| n.inputs.iter().any(|i| i == name)).collect() };

    let ensembles: Vec<&Node> = nodes.iter().filter(|n| n.op_type == "TreeEnsembleRegressor").collect();
    if ensembles.is_empty() {
        let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
        return Err(bad(format!(
            "no TreeEnsembleRegressor: this import reads scikit-learn Isolation Forests exported by skl2onnx (the graph has {})",
            ops.join(", ")
        )));
    }
    if ensembles.len() > MAX_TREES {
        return Err(bad(format!("{} trees, at most {MAX_TREES}", ensembles.len())));
    }
    let mut trees = Vec::new();
    let mut sample_size = None;
    for (t, ens) in ensembles.iter().enumerate() {
        let at = |m: String| bad(format!("tree {t} (node `{}`): {m}", ens.name));
        // The tree's features: a Gather of the graph's input, or the input itself.
        let feeding = ens.inputs.first().ok_or_else(|| at("no input".into()))?;
        let features: Vec<i64> = match producer.get(feeding.as_str()) {
            None if *feeding == input => (0..dim as i64).collect(),
            Some(g) if g.op_type == "Gather" && g.inputs.first() == Some(&input) => {
                let idx = g.inputs.get(1).ok_or_else(|| at("Gather without indices".into()))?;
                constants.get(idx).cloned().ok_or_else(|| at(format!("Gather indices `{idx}` are not a constant")))?
            }
            _ => return Err(at(format!("its input `{feeding}` is neither the graph's input nor a Gather of it"))),
        };
        if let Some(f) = features.iter().find(|&&f| f < 0 || f as usize >= dim) {
            return Err(at(format!("feature {f} is not one of the {dim} inputs")));
        }
        // The leaf id it answers goes (through Casts) into LabelEncoders.
        let output = ens.outputs.first().ok_or_else(|| at("no output".into()))?;
        let mut encoders = Vec::new();
        for c in consumers(output) {
            let reached: Vec<&Node> =
                if c.op_type == "Cast" { c.outputs.iter().flat_map(|o| consumers(o)).collect() } else { vec![c] };
            for r in reached.into_iter().filter(|r| r.op_type == "LabelEncoder") {
                let keys = r.ints("keys_int64s").map_err(&at)?;
                let values = r.floats("values_floats").map_err(&at)?;
                if keys.len() != values.len() {
                    return Err(at(format!("LabelEncoder `{}`: keys and values differ in length", r.name)));
                }
                encoders.push(keys.into_iter().zip(values).collect::<HashMap<i64, f32>>());
            }
        }
        let tree = ensemble_tree(ens, &features, &encoders).map_err(at)?;
        let psi = tree.1;
        match sample_size {
            None => sample_size = Some(psi),
            Some(s) if s == psi => {}
            Some(s) => return Err(at(format!("holds {psi} training samples where tree 0 holds {s}"))),
        }
        trees.push(tree.0);
    }
    let forest = IsolationForest { sample_size: sample_size.unwrap_or(0), trees };
    forest.validate(dim, "imported forest").map_err(|e| bad(e.to_string()))?;
    Ok(forest)
}

/// One tree ensemble node as a native tree, and the samples its leaves hold in all (ψ).
fn ensemble_tree(ens: &Node, features: &[i64], encoders: &[HashMap<i64, f32>]) -> Result<(Tree, usize), String> {
    let tree_ids = ens.ints("nodes_treeids")?;
    let node_ids = ens.ints("nodes_nodeids")?;
    let feature_ids = ens.ints("nodes_featureids")?;
    let values = ens.floats("nodes_values")?;
    let modes = ens.strings("nodes_modes")?;
    let true_ids = ens.ints("nodes_truenodeids")?;
    let false_ids = ens.ints("nodes_falsenodeids")?;
    let target_nodes = ens.ints("target_nodeids")?;
    let target_weights = ens.floats("target_weights")?;
    let n = node_ids.len();
    if n == 0 || n > MAX_NODES {
        return Err(format!("{n} nodes (1 to {MAX_NODES})"));
    }
    if [tree_ids.len(), feature_ids.len(), values.len(), modes.len(), true_ids.len(), false_ids.len()]
        .iter()
        .any(|&l| l != n)
        || target_nodes.len() != target_weights.len()
    {
        return Err("the nodes_* (or target_*) attributes differ in length".into());
    }
    if tree_ids.iter().any(|&t| t != tree_ids[0]) {
        return Err("more than one tree in one TreeEnsembleRegressor (skl2onnx writes one per tree)".into());
    }
    let index: HashMap<i64, usize> = node_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let leaf_answer: HashMap<i64, f32> = target_nodes.iter().copied().zip(target_weights.iter().copied()).collect();
    // The two encoders: depth + 1 of each leaf, and its samples; told apart by the depths the
    // tree's own shape gives.
    let root = node_ids.iter().copied().min().unwrap_or(0);
    let mut depth_of = HashMap::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((id, depth)) = stack.pop() {
        let i = *index.get(&id).ok_or_else(|| format!("node {id} is referenced but not defined"))?;
        if depth > MAX_DEPTH || depth_of.insert(id, depth).is_some() {
            return Err(format!("node {id}: deeper than {MAX_DEPTH} or reached twice (not a tree)"));
        }
        if modes[i] != "LEAF" {
            stack.push((false_ids[i], depth + 1));
            stack.push((true_ids[i], depth + 1));
        }
    }
    let leaves: Vec<(i64, usize)> =
        depth_of.iter().filter(|(id, _)| modes[index[id]] == "LEAF").map(|(&id, &d)| (id, d)).collect();
    let answer = |leaf: i64| -> Result<i64, String> {
        let w = leaf_answer.get(&leaf).ok_or_else(|| format!("leaf {leaf} has no target weight"))?;
        Ok(*w as i64)
    };
    let is_depths = |e: &HashMap<i64, f32>| {
        leaves.iter().all(|&(leaf, d)| answer(leaf).ok().and_then(|k| e.get(&k)).is_some_and(|v| *v == (d + 1) as f32))
    };
    let samples = match encoders {
        [a, b] if is_depths(a) && !is_depths(b) => b,
        [a, b] if is_depths(b) && !is_depths(a) => a,
        _ => {
            return Err(format!(
                "expected two LabelEncoders (leaf depths and samples) after it, found {}",
                encoders.len()
            ));
        }
    };
    let mut leaf_samples = HashMap::new();
    let mut psi = 0usize;
    for &(leaf, _) in &leaves {
        let s =
            *answer(leaf).ok().and_then(|k| samples.get(&k)).ok_or_else(|| format!("leaf {leaf}: no sample count"))?;
        if !(1.0..=1e9).contains(&s) {
            return Err(format!("leaf {leaf}: sample count {s}"));
        }
        leaf_samples.insert(leaf, s as usize);
        psi = psi.checked_add(s as usize).ok_or("more training samples than this machine counts")?;
    }

    // Pre-order: the true branch (x ≤ v, or x < v) is the next node, the false one at `right`.
    let mut tree = Tree { feature: Vec::new(), value: Vec::new(), right: Vec::new() };
    let mut pending: Vec<(i64, Option<usize>)> = vec![(root, None)];
    while let Some((id, parent)) = pending.pop() {
        let i = index[&id];
        let at = tree.feature.len();
        if let Some(p) = parent {
            tree.right[p] = at as u32;
        }
        if modes[i] == "LEAF" {
            let depth = depth_of[&id];
            tree.feature.push(-1);
            tree.value.push((depth as f64 + average_path_length(leaf_samples[&id])) as f32);
            tree.right.push(0);
            continue;
        }
        let local = usize::try_from(feature_ids[i]).ok().filter(|&f| f < features.len());
        let feature = local.ok_or_else(|| format!("node {id}: feature {} of {}", feature_ids[i], features.len()))?;
        let value = match modes[i].as_str() {
            "BRANCH_LT" => values[i],
            // x ≤ v is x < the next float32 above v, for float32 inputs as ONNX feeds them.
            "BRANCH_LEQ" => next_up(values[i]),
            other => return Err(format!("node {id}: mode {other} (only BRANCH_LEQ, BRANCH_LT and LEAF are read)")),
        };
        tree.feature.push(features[feature] as i32);
        tree.value.push(value);
        tree.right.push(0);
        // The false branch is visited after the whole true subtree, which then sets `right`.
        pending.push((false_ids[i], Some(at)));
        pending.push((true_ids[i], None));
    }
    Ok((tree, psi))
}

fn next_up(v: f32) -> f32 {
    if v.is_nan() || v == f32::INFINITY {
        return v;
    }
    if v == 0.0 {
        return f32::from_bits(1);
    }
    let bits = v.to_bits();
    f32::from_bits(if v > 0.0 { bits + 1 } else { bits - 1 })
}

/// A graph node, with the attributes the import reads.
#[derive(Debug)]
struct Node {
    name: String,
    op_type: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: HashMap<String, Fields>,
}

impl Node {
    fn parse(f: &Fields) -> Result<Node, String> {
        let mut attributes = HashMap::new();
        for a in f.messages(5)? {
            attributes.insert(a.string(1)?.unwrap_or_default(), a);
        }
        Ok(Node {
            name: f.string(3)?.unwrap_or_default(),
            op_type: f.string(4)?.unwrap_or_default(),
            inputs: f.strings(1)?,
            outputs: f.strings(2)?,
            attributes,
        })
    }

    fn attribute(&self, name: &str) -> Result<&Fields, String> {
        self.attributes.get(name).ok_or_else(|| format!("{} `{}` has no attribute {name}", self.op_type, self.name))
    }

    fn ints(&self, name: &str) -> Result<Vec<i64>, String> {
        self.attribute(name)?.varints(8).map(|v| v.into_iter().map(|x| x as i64).collect())
    }

    fn floats(&self, name: &str) -> Result<Vec<f32>, String> {
        self.attribute(name)?.fixed32s(7).map(|v| v.into_iter().map(f32::from_bits).collect())
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, String> {
        self.attribute(name)?.strings(9)
    }
}

/// An int64 (or int32) initializer's name and values, `None` for other types.
fn int_tensor(t: &Fields) -> Result<Option<(String, Vec<i64>)>, String> {
    let name = t.string(8)?.unwrap_or_default();
    let values = match t.varints(2)?.first().copied() {
        Some(7) => match t.bytes(9)? {
            Some(raw) if raw.len() % 8 == 0 => {
                raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
            }
            Some(_) => return Err(format!("tensor `{name}`: raw int64 data of a length not a multiple of 8")),
            None => t.varints(7)?.into_iter().map(|v| v as i64).collect(),
        },
        Some(6) => t.varints(5)?.into_iter().map(|v| i64::from(v as i32)).collect(),
        _ => return Ok(None),
    };
    Ok(Some((name, values)))
}

/// The fields of one protobuf message, by number, as they came (wire type, payload).
#[derive(Debug, Default)]
struct Fields {
    fields: Vec<(u32, Value)>,
}

#[derive(Debug, Clone)]
enum Value {
    Varint(u64),
    Fixed64,
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl Fields {
    fn parse(bytes: &[u8]) -> Result<Fields, String> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let key = varint(bytes, &mut pos)?;
            let (number, wire) = (u32::try_from(key >> 3).map_err(|_| "field number too large")?, key & 7);
            let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
                let end = pos.checked_add(n).filter(|&e| e <= bytes.len()).ok_or("truncated field")?;
                let s = &bytes[*pos..end];
                *pos = end;
                Ok(s)
            };
            let value = match wire {
                0 => Value::Varint(varint(bytes, &mut pos)?),
                1 => {
                    take(&mut pos, 8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = usize::try_from(varint(bytes, &mut pos)?).map_err(|_| "length too large")?;
                    Value::Bytes(take(&mut pos, n)?.to_vec())
                }
                5 => Value::Fixed32(take(&mut pos, 4)?.try_into().map_err(|_| "fixed32")?),
                w => return Err(format!("field {number}: wire type {w} is not read")),
            };
            fields.push((number, value));
        }
        Ok(Fields { fields })
    }

    fn all(&self, number: u32) -> impl Iterator<Item = &Value> {
        self.fields.iter().filter(move |(n, _)| *n == number).map(|(_, v)| v)
    }

    fn bytes(&self, number: u32) -> Result<Option<Vec<u8>>, String> {
        match self.all(number).last() {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(_) => Err(format!("field {number} is not length-delimited")),
        }
    }

    fn string(&self, number: u32) -> Result<Option<String>, String> {
        self.bytes(number)?
            .map(|b| String::from_utf8(b).map_err(|_| format!("field {number} is not UTF-8")))
            .transpose()
    }

    fn strings(&self, number: u32) -> Result<Vec<String>, String> {
        self.all(number)
            .map(|v| match v {
                Value::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| format!("field {number} is not UTF-8")),
                _ => Err(format!("field {number} is not a string")),
            })
            .collect()
    }

    fn message(&self, number: u32) -> Result<Option<Fields>, String> {
        self.bytes(number)?.map(|b| Fields::parse(&b)).transpose()
    }

    fn messages(&self, number: u32) -> Result<Vec<Fields>, String> {
        self.all(number)
            .map(|v| match v {
                Value::Bytes(b) => Fields::parse(b),
                _ => Err(format!("field {number} is not a message")),
            })
            .collect()
    }

    /// A repeated varint field, packed or not.
    fn varints(&self, number: u32) -> Result<Vec<u64>, String> {
        let mut out = Vec::new();
        for v in self.all(number) {
            match v {
                Value::Varint(x) => out.push(*x),
                Value::Bytes(b) => {
                    let mut pos = 0;
                    while pos < b.len() {
                        out.push(varint(b, &mut pos)?);
                    }
                }
                _ => return Err(format!("field {number} is not a varint")),
            }
        }
        Ok(out)
    }

    /// A repeated fixed32 field (floats), packed or not.
    fn fixed32s(&self, number: u32) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for v in self.all(number) {
            match v {
                Value::Fixed32(b) => out.push(u32::from_le_bytes(*b)),
                Value::Bytes(b) if b.len() % 4 == 0 => {
                    out.extend(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
                _ => return Err(format!("field {number} is not a list of floats")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_up_is_the_next_float32() {
        assert_eq!(next_up(1.0), 1.0 + f32::EPSILON);
        assert!(next_up(-1.0) > -1.0 && next_up(-1.0) < -0.99999);
        assert_eq!(next_up(0.0), f32::from_bits(1));
    }

    #[test]
    fn bytes_that_are_no_onnx_model_are_refused_without_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff", b"\x0a\x05ab", b"not a model at all", &[0x3a, 0x80, 0x80, 0x80]] {
            let e = isolation_forest(bytes, 4).unwrap_err().to_string();
            assert!(e.starts_with("ONNX model:"), "{e}");
        }
        // The native exporter's graph has no tree ensembles for a PCA model: named as such.
        let model = impeller_core::train(
            &[impeller_core::Channel::new("a", "u"), impeller_core::Channel::new("b", "u")],
            &(0..300)
                .map(|i| impeller_core::Frame {
                    ts_ms: i * 1000,
                    values: vec![(i as f64).sin(), (i as f64 * 0.3).cos()],
                })
                .collect::<Vec<_>>(),
            &impeller_core::TrainConfig::new(impeller_core::detector::DetectorConfig::Pca(Default::default())),
        )
        .unwrap();
        let e = isolation_forest(&crate::onnx::export(&model), model.dim()).unwrap_err().to_string();
        assert!(e.contains("no TreeEnsembleRegressor"), "{e}");
    }
}
