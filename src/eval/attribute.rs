//! Attribute accuracy: does a generated caption name the right class? For a manifest field
//! such as `label` (digit, activity) or `motion`, the classes are the field's distinct values
//! in the manifest; a prediction names the class whose words appear first in it (whole words,
//! after the same normalization as WER), and is right when that is the item's value. A
//! prediction naming no class is wrong.

use std::collections::BTreeSet;

use super::wer::normalize_text;

/// The distinct values of an attribute, normalized.
pub fn classes<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let set: BTreeSet<String> = values
        .into_iter()
        .map(normalize_text)
        .filter(|v| !v.is_empty())
        .collect();
    set.into_iter().collect()
}

/// The class `prediction` names first, if any. Ties at the same position go to the longer
/// class ("playing badminton" over "badminton").
pub fn named_class<'a>(prediction: &str, classes: &'a [String]) -> Option<&'a str> {
    let padded = format!(" {} ", normalize_text(prediction));
    classes
        .iter()
        .filter_map(|c| padded.find(&format!(" {c} ")).map(|pos| (pos, c)))
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())))
        .map(|(_, c)| c.as_str())
}

/// Whether `prediction` names `value` (of the class set) first.
pub fn is_right(prediction: &str, value: &str, classes: &[String]) -> bool {
    named_class(prediction, classes) == Some(normalize_text(value).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_named_class_counts() {
        let cs = classes(["seven", "one", "Running", "walking"]);
        assert!(is_right("A handwritten digit seven.", "seven", &cs));
        assert!(!is_right(
            "A handwritten digit one, or seven.",
            "seven",
            &cs
        ));
        assert!(!is_right("sevens everywhere", "seven", &cs));
        assert!(is_right("The person is running.", "running", &cs));
        assert!(!is_right("Nothing at all.", "running", &cs));
    }

    #[test]
    fn longer_class_wins_a_tie() {
        let cs = classes(["badminton", "playing badminton"]);
        assert_eq!(
            named_class("playing badminton now", &cs),
            Some("playing badminton")
        );
    }
}
