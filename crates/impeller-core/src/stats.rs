//! Small numerical statistics: quantiles, and the normal and F quantiles behind the PCA control
//! limits. Written here (about a hundred lines) instead of pulling a statistics crate into the
//! edge binary; each function has known-answer tests against SciPy.

/// Quantile with linear interpolation between order statistics (NumPy's default, "type 7").
/// `q` is clamped to `[0, 1]`. Returns `None` for an empty slice or one holding NaN.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 1.0);
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The larger of two values, NaN if either is NaN (`f64::max` ignores NaN, which would let a
/// broken score pass as normal).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Population standard deviation (divides by n, as NumPy's `std` does by default).
pub fn std_dev(values: &[f64]) -> f64 {
    let m = mean(values);
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64).sqrt()
}

/// How strongly a series trends, in units of its own noise: the least-squares slope times the
/// series length, divided by the standard deviation of the residuals. About 0 for a stationary
/// series; above 1 when the level moves by more than its noise over the series.
pub fn trend_ratio(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 3 {
        return 0.0;
    }
    let t_mean = (n - 1) as f64 / 2.0;
    let x_mean = mean(values);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, x) in values.iter().enumerate() {
        let dt = i as f64 - t_mean;
        sxy += dt * (x - x_mean);
        sxx += dt * dt;
    }
    let slope = sxy / sxx;
    let resid_var = values
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let r = x - x_mean - slope * (i as f64 - t_mean);
            r * r
        })
        .sum::<f64>()
        / n as f64;
    let resid_sd = resid_var.sqrt();
    if resid_sd <= f64::MIN_POSITIVE {
        return if slope == 0.0 { 0.0 } else { f64::INFINITY };
    }
    slope.abs() * n as f64 / resid_sd
}

/// Inverse of the standard normal CDF (Wichura's algorithm AS 241, about 1e-16 relative error).
// The coefficients are copied as published, digit for digit.
#[allow(clippy::excessive_precision, clippy::unreadable_literal)]
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q
            * (((((((r * 2509.0809287301227 + 33430.575583588128) * r + 67265.7709270087) * r + 45921.95393154987)
                * r
                + 13731.693765509461)
                * r
                + 1971.5909503065513)
                * r
                + 133.14166789178438)
                * r
                + 3.3871328727963665)
            / (((((((r * 5226.495278852545 + 28729.085735721943) * r + 39307.89580009271) * r
                + 21213.794301586597)
                * r
                + 5394.196021424751)
                * r
                + 687.1870074920579)
                * r
                + 42.31333070160091)
                * r
                + 1.0);
    }
    let mut r = if q < 0.0 { p } else { 1.0 - p };
    r = libm::sqrt(-libm::log(r));
    let x = if r <= 5.0 {
        r -= 1.6;
        (((((((r * 7.745450142783414e-4 + 0.022723844989269184) * r + 0.2417807251774506) * r + 1.2704582524523684)
            * r
            + 3.6478483247632045)
            * r
            + 5.769497221460691)
            * r
            + 4.630337846156546)
            * r
            + 1.4234371107496835)
            / (((((((r * 1.0507500716444169e-9 + 5.475938084995345e-4) * r + 0.015198666563616457) * r
                + 0.14810397642748008)
                * r
                + 0.6897673349851)
                * r
                + 1.6763848301838038)
                * r
                + 2.053191626637759)
                * r
                + 1.0)
    } else {
        r -= 5.0;
        (((((((r * 2.0103343992922881e-7 + 2.7115555687434876e-5) * r + 0.0012426609473880784) * r
            + 0.026532189526576124)
            * r
            + 0.2965605718285049)
            * r
            + 1.7848265399172913)
            * r
            + 5.463784911164114)
            * r
            + 6.657904643501103)
            / (((((((r * 2.0442631033899397e-15 + 1.421511758316446e-7) * r + 1.8463183175100548e-5) * r
                + 7.868691311456133e-4)
                * r
                + 0.014875361290850615)
                * r
                + 0.1369298809227358)
                * r
                + 0.599832206555888)
                * r
                + 1.0)
    };
    if q < 0.0 { -x } else { x }
}

/// Natural log of the gamma function for positive arguments (Lanczos, g = 7, n = 9).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection formula.
        let pi = std::f64::consts::PI;
        return libm::log(pi / libm::sin(pi * x)) - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * libm::log(2.0 * std::f64::consts::PI) + (x + 0.5) * libm::log(t) - t + libm::log(a)
}

/// Regularised incomplete beta function I_x(a, b), by Lentz's continued fraction.
pub fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * libm::log(x) + b * libm::log(1.0 - x);
    // The continued fraction converges fast for x < (a+1)/(a+b+2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        libm::exp(ln_front) * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - libm::exp(ln_front) * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + num / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// Upper end of the Wilson score interval for a proportion: the largest share that `successes`
/// of `trials` leave plausible at one-sided `confidence` (0.5: the observed share itself). With
/// few trials it stays well above the observed share, as a decision on a handful of cases should.
pub fn wilson_upper(successes: u64, trials: u64, confidence: f64) -> f64 {
    if trials == 0 {
        return 1.0;
    }
    let (n, z) = (trials as f64, normal_quantile(confidence));
    let p = successes.min(trials) as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// Quantile of the F distribution with `d1` and `d2` degrees of freedom, by bisection on the
/// regularised incomplete beta function (200 halvings: exact to the last bit or two).
pub fn f_quantile(p: f64, d1: f64, d2: f64) -> f64 {
    if !(0.0..1.0).contains(&p) || d1 <= 0.0 || d2 <= 0.0 {
        return f64::NAN;
    }
    let (a, b) = (d1 / 2.0, d2 / 2.0);
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let u = 0.5 * (lo + hi);
    d2 * u / (d1 * (1.0 - u))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [3.0, 1.0, 4.0, 1.0, 5.0];
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 1.0), Some(5.0));
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        // numpy.quantile([3,1,4,1,5], 0.9) == 4.6
        assert!(close(quantile(&v, 0.9).unwrap_or(f64::NAN), 4.6, 1e-12));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0, f64::NAN], 0.5), None);
    }

    #[test]
    fn normal_quantile_matches_scipy() {
        // scipy.stats.norm.ppf
        assert!(close(normal_quantile(0.99), 2.326_347_874_040_840_8, 1e-14));
        assert!(close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-14));
        assert!(close(normal_quantile(1e-10), -6.361_340_902_404_056, 1e-13));
        assert_eq!(normal_quantile(0.5), 0.0);
        assert!(normal_quantile(1.5).is_nan());
    }

    #[test]
    fn wilson_upper_matches_statsmodels() {
        // statsmodels.stats.proportion.proportion_confint(k, n, alpha, method="wilson")[1]: a
        // two-sided interval at 1 - alpha is one-sided at 1 - alpha / 2.
        for (k, n, at_95, at_99) in [
            (2, 5, 0.727_516_828_133_807_2, 0.808_977_874_990_695_5),
            (0, 5, 0.351_116_500_765_101_4, 0.519_779_994_590_844_5),
            (1, 8, 0.411_143_374_330_012_3, 0.535_222_425_535_245_6),
            (45, 100, 0.532_073_301_383_863_6, 0.565_320_522_686_134),
            (0, 1, 0.730_134_051_215_946, 0.844_039_852_690_530_8),
        ] {
            assert!(close(wilson_upper(k, n, 0.95), at_95, 1e-12), "{k} of {n}");
            assert!(close(wilson_upper(k, n, 0.99), at_99, 1e-12), "{k} of {n}");
        }
        assert_eq!(wilson_upper(2, 5, 0.5), 0.4, "at 0.5 the observed share");
        assert_eq!(wilson_upper(0, 0, 0.95), 1.0, "nothing observed rules nothing out");
    }

    #[test]
    fn incomplete_beta_and_f_quantile_match_scipy() {
        // scipy.stats.beta.cdf(0.3, 2.5, 4.0)
        assert!(close(incomplete_beta(0.3, 2.5, 4.0), 0.352_197_585_906_767_2, 1e-12));
        // scipy.stats.f.ppf
        assert!(close(f_quantile(0.99, 5.0, 390.0), 3.064_413_006_087_493_7, 1e-10));
        assert!(close(f_quantile(0.95, 3.0, 20.0), 3.098_391_212_140_781, 1e-10));
        assert!(close(f_quantile(0.999, 1.0, 10.0), 21.039_595_271_003_86, 1e-9));
    }

    #[test]
    fn trend_ratio_separates_a_ramp_from_noise() {
        let mut rng = crate::rng::Rng::new(3);
        let noise: Vec<f64> = (0..400).map(|_| rng.next_f64() - 0.5).collect();
        let ramp: Vec<f64> = noise.iter().enumerate().map(|(i, e)| e + i as f64 * 0.01).collect();
        assert!(trend_ratio(&noise) < 0.5, "noise trend {}", trend_ratio(&noise));
        assert!(trend_ratio(&ramp) > 5.0, "ramp trend {}", trend_ratio(&ramp));
        assert_eq!(trend_ratio(&[2.0; 10]), 0.0);
    }
}
