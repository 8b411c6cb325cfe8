//! ONNX export of a model's scoring graph: the scaler and the detector, from a batch of feature
//! vectors (`features`, float32 `[N, dim]`, the rolling features before scaling) to raw scores
//! (`score`, float32 `[N]`). The rolling windows before it and the calibration after it
//! (smoothing, threshold, debouncing) keep state from frame to frame and stay native.
//!
//! The file is written directly in the protobuf wire format (a few message types of `onnx.proto`,
//! opset 17 and `ai.onnx.ml` 3 for the Isolation Forest's tree ensemble), so exporting costs no
//! dependency. CI checks every detector kind with onnxruntime against the native scores.

use impeller_core::Model;
use impeller_core::detector::Detector;
use impeller_core::detector::isolation_forest::average_path_length;

/// ONNX IR version 8 (ONNX 1.10+); onnxruntime 1.10 and later read it.
const IR_VERSION: u64 = 8;
const OPSET: u64 = 17;
const ML_OPSET: u64 = 3;
const FLOAT: u64 = 1;

/// The model's scaler and detector as an ONNX model.
pub fn export(model: &Model) -> Vec<u8> {
    let dim = model.dim();
    let mut g = Graph::default();
    let mean = g.constant("scaler_mean", &[dim], &to_f32(&model.scaler.mean));
    let scale = g.constant("scaler_scale", &[dim], &to_f32(&model.scaler.scale));
    let centred = g.node("Sub", &["features", &mean], &[]);
    let z = g.node("Div", &[&centred, &scale], &[]);
    let score = detector(&mut g, &model.detector, &z, dim, "");
    g.output("Identity", &[&score], "score");

    let mut graph = Vec::new();
    for n in &g.nodes {
        put_bytes(&mut graph, 1, n);
    }
    put_str(&mut graph, 2, "impeller scoring graph");
    for t in &g.initializers {
        put_bytes(&mut graph, 5, t);
    }
    put_bytes(&mut graph, 11, &value_info("features", &[Dim::Param("N"), Dim::Value(dim as u64)]));
    put_bytes(&mut graph, 12, &value_info("score", &[Dim::Param("N")]));

    let mut m = Vec::new();
    put_varint_field(&mut m, 1, IR_VERSION);
    put_str(&mut m, 2, "impeller");
    put_str(&mut m, 3, env!("CARGO_PKG_VERSION"));
    put_str(&mut m, 4, "impeller.detector");
    put_bytes(&mut m, 7, &graph);
    for (domain, version) in [("", OPSET), ("ai.onnx.ml", ML_OPSET)] {
        let mut opset = Vec::new();
        put_str(&mut opset, 1, domain);
        put_varint_field(&mut opset, 2, version);
        put_bytes(&mut m, 8, &opset);
    }
    m
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The graph of one detector from standardised features `z` to its raw score `[N]`.
fn detector(g: &mut Graph, d: &Detector, z: &str, dim: usize, prefix: &str) -> String {
    match d {
        Detector::Zscore(_) => {
            let abs = g.node("Abs", &[z], &[]);
            g.node("ReduceMax", &[&abs], &[Attr::ints("axes", &[1]), Attr::int("keepdims", 0)])
        }
        Detector::Pca(p) => {
            // An int8 model's graph carries its weights dequantised (ONNX runtimes take floats).
            let components = p.components.to_float();
            let k = components.len();
            let mean = g.constant(&format!("{prefix}pca_mean"), &[dim], &to_f32(&p.mean));
            let flat: Vec<f64> = components.iter().flatten().copied().collect();
            let comps = g.constant(&format!("{prefix}pca_components"), &[k, dim], &to_f32(&flat));
            let transposed: Vec<f64> = (0..dim).flat_map(|j| components.iter().map(move |c| c[j])).collect();
            let comps_t = g.constant(&format!("{prefix}pca_components_t"), &[dim, k], &to_f32(&transposed));
            let eig = g.constant(&format!("{prefix}pca_eigenvalues"), &[k], &to_f32(&p.eigenvalues));
            let c = g.node("Sub", &[z, &mean], &[]);
            let t = g.node("MatMul", &[&c, &comps_t], &[]);
            let t_sq = g.node("Mul", &[&t, &t], &[]);
            let t_scaled = g.node("Div", &[&t_sq, &eig], &[]);
            let t2 = g.reduce_sum(&t_scaled, false);
            let recon = g.node("MatMul", &[&t, &comps], &[]);
            let r = g.node("Sub", &[&c, &recon], &[]);
            let r_sq = g.node("Mul", &[&r, &r], &[]);
            let q = g.reduce_sum(&r_sq, false);
            let t2_limit = g.scalar(&format!("{prefix}pca_t2_limit"), p.t2_limit);
            let t2n = g.node("Div", &[&t2, &t2_limit], &[]);
            // No residual variance left: Q is not used (scores 0), as natively.
            let q_scale =
                g.scalar(&format!("{prefix}pca_q_scale"), if p.q_limit > 0.0 { 1.0 / p.q_limit } else { 0.0 });
            let qn = g.node("Mul", &[&q, &q_scale], &[]);
            match p.statistic {
                impeller_core::detector::pca::PcaStatistic::Both => g.node("Max", &[&t2n, &qn], &[]),
                impeller_core::detector::pca::PcaStatistic::T2 => t2n,
                impeller_core::detector::pca::PcaStatistic::Q => qn,
            }
        }
        Detector::Mset(m) => {
            let (rows, inverse) = (m.memory.to_float(), m.similarity_inverse.to_float());
            let k = rows.len();
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            let memory = g.constant(&format!("{prefix}mset_memory"), &[k, dim], &to_f32(&flat));
            let inv_t: Vec<f64> = (0..k).flat_map(|j| inverse.iter().map(move |row| row[j])).collect();
            let inverse_t = g.constant(&format!("{prefix}mset_inverse_t"), &[k, k], &to_f32(&inv_t));
            let axes = g.int64s(&format!("{prefix}mset_axis1"), &[1]);
            let z3 = g.node("Unsqueeze", &[z, &axes], &[]);
            let diff = g.node("Sub", &[&z3, &memory], &[]);
            let sq = g.node("Mul", &[&diff, &diff], &[]);
            let axis2 = g.int64s(&format!("{prefix}mset_axis2"), &[2]);
            let sum = g.node("ReduceSum", &[&sq, &axis2], &[Attr::int("keepdims", 0)]);
            let dist = g.node("Sqrt", &[&sum], &[]);
            let one = g.scalar(&format!("{prefix}mset_one"), 1.0);
            let plus = g.node("Add", &[&dist, &one], &[]);
            let sim = g.node("Reciprocal", &[&plus], &[]);
            let w = g.node("MatMul", &[&sim, &inverse_t], &[]);
            let total = g.reduce_sum(&w, true);
            // Weights that cancel out are used raw, as natively.
            let abs = g.node("Abs", &[&total], &[]);
            let tiny = g.scalar(&format!("{prefix}mset_tiny"), 1e-12);
            let big = g.node("Greater", &[&abs, &tiny], &[]);
            let norm = g.node("Where", &[&big, &total, &one], &[]);
            let wn = g.node("Div", &[&w, &norm], &[]);
            let estimate = g.node("MatMul", &[&wn, &memory], &[]);
            let r = g.node("Sub", &[z, &estimate], &[]);
            let r_sq = g.node("Mul", &[&r, &r], &[]);
            let s = g.reduce_sum(&r_sq, false);
            g.node("Sqrt", &[&s], &[])
        }
        Detector::IsolationForest(f) => {
            let mut a = TreeAttrs::default();
            for (t, tree) in f.trees.iter().enumerate() {
                for i in 0..tree.feature.len() {
                    a.tree_ids.push(t as i64);
                    a.node_ids.push(i as i64);
                    let leaf = tree.feature[i] < 0;
                    a.features.push(if leaf { 0 } else { i64::from(tree.feature[i]) });
                    a.values.push(if leaf { 0.0 } else { tree.value[i] });
                    a.modes.push(if leaf { "LEAF" } else { "BRANCH_LT" });
                    // Natively: x < value goes to the next node, otherwise to `right`.
                    a.true_ids.push(if leaf { 0 } else { i as i64 + 1 });
                    a.false_ids.push(if leaf { 0 } else { i64::from(tree.right[i]) });
                    if leaf {
                        a.target_tree_ids.push(t as i64);
                        a.target_node_ids.push(i as i64);
                        a.target_weights.push(tree.value[i]);
                    }
                }
            }
            let modes: Vec<&[u8]> = a.modes.iter().map(|m| m.as_bytes()).collect();
            let zeros = vec![0i64; a.target_weights.len()];
            let mean_path = g.node_in(
                "ai.onnx.ml",
                "TreeEnsembleRegressor",
                &[z],
                &[
                    Attr::string("aggregate_function", "AVERAGE"),
                    Attr::int("n_targets", 1),
                    Attr::ints("nodes_treeids", &a.tree_ids),
                    Attr::ints("nodes_nodeids", &a.node_ids),
                    Attr::ints("nodes_featureids", &a.features),
                    Attr::floats("nodes_values", &a.values),
                    Attr::strings("nodes_modes", &modes),
                    Attr::ints("nodes_truenodeids", &a.true_ids),
                    Attr::ints("nodes_falsenodeids", &a.false_ids),
                    Attr::ints("target_treeids", &a.target_tree_ids),
                    Attr::ints("target_nodeids", &a.target_node_ids),
                    Attr::ints("target_ids", &zeros),
                    Attr::floats("target_weights", &a.target_weights),
                ],
            );
            let shape = g.int64s(&format!("{prefix}iforest_shape"), &[-1]);
            let flat = g.node("Reshape", &[&mean_path, &shape], &[]);
            // 2^(−E[h]/c(ψ)) = exp(−E[h]·ln 2 / c(ψ)).
            let factor = g.scalar(
                &format!("{prefix}iforest_factor"),
                -std::f64::consts::LN_2 / average_path_length(f.sample_size),
            );
            let e = g.node("Mul", &[&flat, &factor], &[]);
            g.node("Exp", &[&e], &[])
        }
        Detector::Autoencoder(ae) => {
            let mut h = z.to_string();
            for (l, layer) in ae.layers.iter().enumerate() {
                let (outs, ins) = (layer.weights.len(), layer.weights.width());
                let flat: Vec<f64> = layer.weights.to_float().into_iter().flatten().collect();
                let w = g.constant(&format!("{prefix}ae_w{l}"), &[outs, ins], &to_f32(&flat));
                let b = g.constant(&format!("{prefix}ae_b{l}"), &[outs], &to_f32(&layer.bias));
                h = g.node("Gemm", &[&h, &w, &b], &[Attr::int("transB", 1)]);
                if layer.tanh {
                    h = g.node("Tanh", &[&h], &[]);
                }
            }
            let r = g.node("Sub", &[&h, z], &[]);
            let r_sq = g.node("Mul", &[&r, &r], &[]);
            g.node("ReduceMean", &[&r_sq], &[Attr::ints("axes", &[1]), Attr::int("keepdims", 0)])
        }
        Detector::Ensemble(e) => {
            let mut normalised = Vec::new();
            for (i, m) in e.members.iter().enumerate() {
                let p = format!("{prefix}m{i}_");
                let raw = detector(g, &m.detector, z, dim, &p);
                let center = g.scalar(&format!("{p}center"), m.center);
                let spread = g.scalar(&format!("{p}spread"), m.spread);
                let d = g.node("Sub", &[&raw, &center], &[]);
                normalised.push(g.node("Div", &[&d, &spread], &[]));
            }
            let refs: Vec<&str> = normalised.iter().map(String::as_str).collect();
            match e.combine {
                impeller_core::detector::ensemble::Combine::Max => g.node("Max", &refs, &[]),
                impeller_core::detector::ensemble::Combine::Mean => {
                    let sum = g.node("Sum", &refs, &[]);
                    let n = g.scalar(&format!("{prefix}ensemble_n"), e.members.len() as f64);
                    g.node("Div", &[&sum, &n], &[])
                }
            }
        }
    }
}

#[derive(Default)]
struct TreeAttrs {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    features: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<&'static str>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    target_tree_ids: Vec<i64>,
    target_node_ids: Vec<i64>,
    target_weights: Vec<f32>,
}

/// Nodes and initializers, encoded as they are added; values are named `v1`, `v2`, …
#[derive(Default)]
struct Graph {
    nodes: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    next: usize,
}

enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, Vec<i64>),
    Floats(&'a str, &'a [f32]),
    Str(&'a str, &'a str),
    Strings(&'a str, &'a [&'a [u8]]),
}

impl<'a> Attr<'a> {
    fn int(name: &'a str, v: i64) -> Attr<'a> {
        Attr::Int(name, v)
    }
    fn ints(name: &'a str, v: &[i64]) -> Attr<'a> {
        Attr::Ints(name, v.to_vec())
    }
    fn floats(name: &'a str, v: &'a [f32]) -> Attr<'a> {
        Attr::Floats(name, v)
    }
    fn string(name: &'a str, v: &'a str) -> Attr<'a> {
        Attr::Str(name, v)
    }
    fn strings(name: &'a str, v: &'a [&'a [u8]]) -> Attr<'a> {
        Attr::Strings(name, v)
    }

    /// AttributeProto: name 1, f 2, i 3, s 4, floats 7, ints 8, strings 9, type 20.
    fn encode(&self) -> Vec<u8> {
        let mut a = Vec::new();
        match self {
            Attr::Int(name, v) => {
                put_str(&mut a, 1, name);
                put_varint_field(&mut a, 3, *v as u64);
                put_varint_field(&mut a, 20, 2);
            }
            Attr::Ints(name, v) => {
                put_str(&mut a, 1, name);
                let mut packed = Vec::new();
                for x in v {
                    put_varint(&mut packed, *x as u64);
                }
                put_bytes(&mut a, 8, &packed);
                put_varint_field(&mut a, 20, 7);
            }
            Attr::Floats(name, v) => {
                put_str(&mut a, 1, name);
                let packed: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                put_bytes(&mut a, 7, &packed);
                put_varint_field(&mut a, 20, 6);
            }
            Attr::Str(name, v) => {
                put_str(&mut a, 1, name);
                put_bytes(&mut a, 4, v.as_bytes());
                put_varint_field(&mut a, 20, 3);
            }
            Attr::Strings(name, v) => {
                put_str(&mut a, 1, name);
                for s in v.iter() {
                    put_bytes(&mut a, 9, s);
                }
                put_varint_field(&mut a, 20, 8);
            }
        }
        a
    }
}

impl Graph {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("v{}", self.next)
    }

    /// NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7.
    fn encode_node(&mut self, domain: &str, op: &str, inputs: &[&str], out: &str, attrs: &[Attr<'_>]) {
        let mut n = Vec::new();
        for i in inputs {
            put_str(&mut n, 1, i);
        }
        put_str(&mut n, 2, out);
        put_str(&mut n, 3, &format!("{op}_{out}"));
        put_str(&mut n, 4, op);
        for a in attrs {
            put_bytes(&mut n, 5, &a.encode());
        }
        if !domain.is_empty() {
            put_str(&mut n, 7, domain);
        }
        self.nodes.push(n);
    }

    fn node_in(&mut self, domain: &str, op: &str, inputs: &[&str], attrs: &[Attr<'_>]) -> String {
        let out = self.fresh();
        self.encode_node(domain, op, inputs, &out, attrs);
        out
    }

    /// A node whose output is the graph output `name`.
    fn output(&mut self, op: &str, inputs: &[&str], name: &str) {
        self.encode_node("", op, inputs, name, &[]);
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr<'_>]) -> String {
        self.node_in("", op, inputs, attrs)
    }

    /// Sum over axis 1 (opset 13+ takes the axes as an input).
    fn reduce_sum(&mut self, x: &str, keepdims: bool) -> String {
        let axes = self.int64s(&format!("axis1_{}", self.next), &[1]);
        self.node("ReduceSum", &[x, &axes], &[Attr::int("keepdims", i64::from(keepdims))])
    }

    /// TensorProto: dims 1, data_type 2, name 8, raw_data 9 (little-endian).
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let mut t = Vec::new();
        for d in dims {
            put_varint_field(&mut t, 1, *d as u64);
        }
        put_varint_field(&mut t, 2, FLOAT);
        put_str(&mut t, 8, name);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        put_bytes(&mut t, 9, &raw);
        self.initializers.push(t);
        name.to_string()
    }

    fn scalar(&mut self, name: &str, v: f64) -> String {
        self.constant(name, &[], &[v as f32])
    }

    fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        let mut t = Vec::new();
        put_varint_field(&mut t, 1, values.len() as u64);
        put_varint_field(&mut t, 2, 7);
        put_str(&mut t, 8, name);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        put_bytes(&mut t, 9, &raw);
        self.initializers.push(t);
        name.to_string()
    }
}

enum Dim<'a> {
    Value(u64),
    Param(&'a str),
}

/// ValueInfoProto (name 1, type 2) of a float tensor.
fn value_info(name: &str, dims: &[Dim<'_>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Value(v) => put_varint_field(&mut dim, 1, *v),
            Dim::Param(p) => put_str(&mut dim, 2, p),
        }
        put_bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    put_varint_field(&mut tensor, 1, FLOAT);
    put_bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    put_bytes(&mut ty, 1, &tensor);
    let mut v = Vec::new();
    put_str(&mut v, 1, name);
    put_bytes(&mut v, 2, &ty);
    v
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_follow_the_wire_format() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut f = Vec::new();
        put_str(&mut f, 2, "ab");
        assert_eq!(f, [0x12, 2, b'a', b'b']);
        let mut n = Vec::new();
        put_varint_field(&mut n, 3, (-1i64) as u64);
        assert_eq!(n.len(), 11, "a negative int64 takes ten bytes");
    }
}
