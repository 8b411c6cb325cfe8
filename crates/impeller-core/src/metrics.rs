//! Evaluation metrics of binary alarms against labels, as the SKAB leaderboard defines them:
//! pointwise confusion counts summed over files, F1 = TP / (TP + (FP + FN)/2),
//! false-alarm rate FAR = FP / (FP + TN), missed-alarm rate MAR = FN / (FN + TP); and per
//! labelled anomaly, whether and how soon it was detected.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    pub fn add(&mut self, actual: bool, predicted: bool) {
        match (actual, predicted) {
            (true, true) => self.tp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    pub fn from_labels(actual: &[bool], predicted: &[bool]) -> Self {
        let mut c = Self::default();
        for (&a, &p) in actual.iter().zip(predicted) {
            c.add(a, p);
        }
        c
    }

    pub fn merge(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.tn += other.tn;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }

    /// NaN when there is nothing to score.
    pub fn f1(&self) -> f64 {
        ratio(self.tp, self.tp as f64 + (self.fp + self.fn_) as f64 / 2.0)
    }

    /// False-alarm rate, a fraction (multiply by 100 for %).
    pub fn far(&self) -> f64 {
        ratio(self.fp, (self.fp + self.tn) as f64)
    }

    /// Missed-alarm rate, a fraction.
    pub fn mar(&self) -> f64 {
        ratio(self.fn_, (self.fn_ + self.tp) as f64)
    }
}

fn ratio(num: u64, den: f64) -> f64 {
    if den > 0.0 { num as f64 / den } else { f64::NAN }
}

/// A labelled anomaly: a run of consecutive anomalous rows `[start, end)`, and the first row in
/// it that raised an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub start: usize,
    pub end: usize,
    pub first_alarm: Option<usize>,
}

impl Detection {
    /// Rows from the anomaly's start to its first alarm; `None` if it was missed.
    pub fn delay_rows(&self) -> Option<usize> {
        self.first_alarm.map(|a| a - self.start)
    }
}

/// Every labelled anomaly with its first alarm.
pub fn detections(actual: &[bool], predicted: &[bool]) -> Vec<Detection> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < actual.len() {
        if !actual[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < actual.len() && actual[i] {
            i += 1;
        }
        let first_alarm = (start..i).find(|&r| predicted.get(r).copied().unwrap_or(false));
        out.push(Detection { start, end: i, first_alarm });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_rates() {
        let actual = [true, true, false, false, true, false];
        let pred = [true, false, true, false, true, false];
        let c = Confusion::from_labels(&actual, &pred);
        assert_eq!(c, Confusion { tp: 2, tn: 2, fp: 1, fn_: 1 });
        assert_eq!(c.f1(), 2.0 / 3.0);
        assert_eq!(c.far(), 1.0 / 3.0);
        assert_eq!(c.mar(), 1.0 / 3.0);
        assert!(Confusion::default().f1().is_nan());
    }

    #[test]
    fn always_alarming_on_skab_gives_f1_0_70() {
        // 12,771 of SKAB's 23,801 test rows are anomalous: alarming on every row gives
        // F1 = 12771 / (12771 + 11030/2) ≈ 0.70 with FAR 100 %.
        let c = Confusion { tp: 12_771, tn: 0, fp: 11_030, fn_: 0 };
        assert!((c.f1() - 0.698).abs() < 0.001);
        assert_eq!(c.far(), 1.0);
    }

    #[test]
    fn detections_and_delays() {
        let actual = [false, true, true, true, false, true, true, false];
        let pred = [true, false, false, true, false, false, false, true];
        let d = detections(&actual, &pred);
        assert_eq!(
            d,
            vec![
                Detection { start: 1, end: 4, first_alarm: Some(3) },
                Detection { start: 5, end: 7, first_alarm: None },
            ]
        );
        assert_eq!(d[0].delay_rows(), Some(2));
        assert_eq!(d[1].delay_rows(), None);
    }
}
