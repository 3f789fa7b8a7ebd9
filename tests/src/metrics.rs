//! Prometheus text read as samples, so a check matches a whole sample (`name{labels} value`)
//! and never a substring: `..._total{...} 1` must not pass when the value is 10 or 12.

/// The samples of a `/metrics` text: each line that is not a comment, as its series (name and
/// labels, as written) and its value.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

/// The value of one series, exactly as named (labels in the order attache writes them).
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).find(|(s, _)| *s == series).map(|(_, v)| v)
}

/// Whether `sample` (`series value`) is one of the text's samples, series and value alike.
pub fn has(text: &str, sample: &str) -> bool {
    let Some((series, want)) = sample.rsplit_once(' ') else {
        panic!("{sample:?} names no value: write `series value`");
    };
    let want: f64 = want
        .parse()
        .unwrap_or_else(|_| panic!("{sample:?}: {want:?} is not a number"));
    value(text, series) == Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total x\n# TYPE x_total counter\nx_total{a=\"b\"} 12\nx_total{a=\"c\"} 1\ny 0.5\n";

    #[test]
    fn a_sample_matches_whole_never_a_prefix_of_its_value() {
        assert!(has(TEXT, "x_total{a=\"b\"} 12"));
        assert!(!has(TEXT, "x_total{a=\"b\"} 1"), "1 is not 12");
        assert!(has(TEXT, "x_total{a=\"c\"} 1"));
        assert!(!has(TEXT, "x_total{a=\"\"} 1"));
        assert!(has(TEXT, "y 0.5"));
        assert_eq!(value(TEXT, "x_total"), None, "a name alone is not a series");
    }
}
