//! Property tests: round trips, determinism, streaming features against naive recomputation.

use impeller_core::features::{FeatureKind, FeatureSpec, FeatureState, Scaler};
use impeller_core::matrix::Matrix;
use impeller_core::metrics::Confusion;
use impeller_core::{Model, train};
use proptest::prelude::*;

use crate::util::{channels, configs, frames};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scaling_round_trips(rows in prop::collection::vec(prop::collection::vec(-1e6f64..1e6, 3), 2..50)) {
        let m = Matrix::from_rows(3, &rows);
        let scaler = Scaler::fit(&m);
        for r in &rows {
            let mut v = r.clone();
            scaler.transform(&mut v);
            scaler.inverse(&mut v);
            for (a, b) in v.iter().zip(r) {
                prop_assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn rolling_features_equal_the_naive_computation(
        series in prop::collection::vec(-1e3f64..1e3, 2..80),
        window in 2usize..12,
    ) {
        use FeatureKind::*;
        let spec = FeatureSpec { window, kinds: vec![Value, Diff, Mean, Std, Slope] };
        let mut st = FeatureState::new(&spec, 1);
        let mut out = [0.0; 5];
        for (i, &v) in series.iter().enumerate() {
            if !st.push(&[v]) {
                prop_assert!(i + 1 < window);
                continue;
            }
            st.write(&mut out);
            let w = &series[i + 1 - window..=i];
            let mean = w.iter().sum::<f64>() / window as f64;
            let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / window as f64).sqrt();
            let tm = (window - 1) as f64 / 2.0;
            let slope = w.iter().enumerate().map(|(t, x)| (t as f64 - tm) * (x - mean)).sum::<f64>()
                / (0..window).map(|t| (t as f64 - tm).powi(2)).sum::<f64>();
            let expect = [v, v - series[i - 1], mean, std, slope];
            for (got, want) in out.iter().zip(expect) {
                prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{got} vs {want}");
            }
        }
    }

    #[test]
    fn confusion_counts_every_row_once(pairs in prop::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
        let (a, p): (Vec<bool>, Vec<bool>) = pairs.iter().copied().unzip();
        let c = Confusion::from_labels(&a, &p);
        prop_assert_eq!((c.tp + c.tn + c.fp + c.fn_) as usize, pairs.len());
        prop_assert_eq!((c.tp + c.fn_) as usize, a.iter().filter(|&&x| x).count());
    }
}

proptest! {
    // Training runs inside each case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn models_round_trip_through_their_file_format(data_seed in any::<u64>(), seed in any::<u64>(), kind in 0usize..6) {
        let (_, mut config) = configs().swap_remove(kind);
        config.seed = seed;
        let model = train(&channels(), &frames(300, data_seed, None), &config).unwrap();
        let bytes = model.to_json().unwrap();
        let back = Model::from_json(&bytes).unwrap();
        prop_assert_eq!(&back, &model);
        prop_assert!(back.to_json().unwrap() == bytes, "re-encoding changed the bytes");
    }

    #[test]
    fn same_data_and_seed_give_identical_bytes(data_seed in any::<u64>(), seed in any::<u64>(), kind in 0usize..6) {
        let (_, mut config) = configs().swap_remove(kind);
        config.seed = seed;
        let data = frames(300, data_seed, None);
        prop_assert!(train(&channels(), &data, &config).unwrap().to_json().unwrap() == train(&channels(), &data, &config).unwrap().to_json().unwrap());
    }
}
