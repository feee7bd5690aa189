//! The bundled SNOMED CT subset (`fhir-profiles/snomed-ct-subset.json`): concept ids with their
//! is-a parents, so that a referral for a specific condition (cerebral infarction) reaches a
//! service that serves its ancestor (cerebrovascular accident).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;

/// The SNOMED CT system URI.
pub const SYSTEM: &str = "http://snomed.info/sct";

static SUBSET: &str = include_str!("../../fhir-profiles/snomed-ct-subset.json");

#[derive(Deserialize)]
struct File {
    concept: Vec<Concept>,
}

#[derive(Deserialize)]
struct Concept {
    code: String,
    display: String,
    parent: Vec<String>,
}

/// The is-a hierarchy of the subset.
pub struct Hierarchy {
    parents: HashMap<String, Vec<String>>,
    labels: HashMap<String, String>,
}

impl Hierarchy {
    /// The bundled subset, parsed once.
    pub fn shared() -> &'static Hierarchy {
        static SHARED: OnceLock<Hierarchy> = OnceLock::new();
        SHARED.get_or_init(|| Hierarchy::parse(SUBSET).expect("the bundled SNOMED CT subset parses"))
    }

    fn parse(text: &str) -> Result<Hierarchy, serde_json::Error> {
        let file: File = serde_json::from_str(text)?;
        let mut parents = HashMap::new();
        let mut labels = HashMap::new();
        for c in file.concept {
            labels.insert(c.code.clone(), c.display);
            parents.insert(c.code, c.parent);
        }
        Ok(Hierarchy { parents, labels })
    }

    /// Whether `code` is `ancestor` or one of its descendants in the subset.
    pub fn is_a(&self, code: &str, ancestor: &str) -> bool {
        if code == ancestor {
            return true;
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = vec![code];
        while let Some(c) = stack.pop() {
            for p in self.parents.get(c).into_iter().flatten() {
                if p == ancestor {
                    return true;
                }
                if seen.insert(p.as_str()) {
                    stack.push(p);
                }
            }
        }
        false
    }

    /// Whether the subset knows the concept.
    pub fn knows(&self, code: &str) -> bool {
        self.parents.contains_key(code)
    }

    /// The concept's preferred term in the subset.
    pub fn label(&self, code: &str) -> Option<&str> {
        self.labels.get(code).map(String::as_str)
    }
}

/// The Verhoeff check of a SNOMED CT identifier (its last digit checks the others).
pub fn verhoeff_ok(id: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    if !(6..=18).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut c = 0u8;
    for (i, b) in id.bytes().rev().enumerate() {
        c = D[c as usize][P[i % 8][(b - b'0') as usize] as usize];
    }
    c == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_concept_is_a_checked_snomed_concept_id_with_known_parents_and_no_cycles() {
        let file: File = serde_json::from_str(SUBSET).unwrap();
        let h = Hierarchy::shared();
        let mut codes = HashSet::new();
        for c in &file.concept {
            assert!(verhoeff_ok(&c.code), "{} fails its Verhoeff check digit", c.code);
            // The partition identifier (second and third digits from the right) of a concept is 00.
            assert_eq!(&c.code[c.code.len() - 3..c.code.len() - 1], "00", "{} is not a concept id", c.code);
            assert!(codes.insert(c.code.clone()), "{} twice", c.code);
            assert!(!c.display.is_empty());
        }
        for c in &file.concept {
            for p in &c.parent {
                assert!(codes.contains(p), "{}: parent {p} is not in the subset", c.code);
                assert!(!h.is_a(p, &c.code), "{} and {p} form a cycle", c.code);
            }
        }
    }

    #[test]
    fn descendants_match_their_ancestors_not_the_reverse() {
        let h = Hierarchy::shared();
        assert!(h.is_a("432504007", "230690007"), "cerebral infarction is-a cerebrovascular accident");
        assert!(h.is_a("44054006", "73211009"), "type 2 diabetes is-a diabetes mellitus");
        assert!(h.is_a("372137005", "363346000"), "primary breast cancer is-a malignant neoplastic disease");
        assert!(!h.is_a("73211009", "44054006"));
        assert!(!h.is_a("230690007", "73211009"));
        assert!(h.is_a("999999999", "999999999"), "an unknown code still matches itself");
        assert_eq!(h.label("230690007"), Some("Cerebrovascular accident"));
    }

    #[test]
    fn verhoeff_rejects_typos() {
        assert!(verhoeff_ok("230690007"));
        assert!(!verhoeff_ok("230690008"));
        assert!(!verhoeff_ok("230960007"));
        assert!(!verhoeff_ok("23069x007"));
    }
}
