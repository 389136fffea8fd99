//! Object names: the DNS-1123 rule for user-given names and the random `adjective-noun`
//! generator for VMs created without one.
//!
//! Generated names join the two words with `-`, as Weave Ignite's generator did, so that
//! every name, given or generated, is a valid guest hostname (underscores are not).

use rand::seq::SliceRandom;
use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "admiring",
    "agile",
    "amber",
    "ancient",
    "autumn",
    "billowing",
    "bitter",
    "black",
    "blue",
    "bold",
    "brave",
    "brisk",
    "calm",
    "clever",
    "cold",
    "cool",
    "crimson",
    "curious",
    "damp",
    "dark",
    "dawn",
    "delicate",
    "divine",
    "dry",
    "eager",
    "empty",
    "falling",
    "fancy",
    "flat",
    "floral",
    "fragrant",
    "frosty",
    "gentle",
    "green",
    "hidden",
    "holy",
    "icy",
    "jolly",
    "late",
    "lingering",
    "little",
    "lively",
    "long",
    "lucky",
    "misty",
    "morning",
    "muddy",
    "nameless",
    "noisy",
    "odd",
    "old",
    "orange",
    "patient",
    "plain",
    "polished",
    "proud",
    "purple",
    "quiet",
    "rapid",
    "red",
    "restless",
    "rough",
    "round",
    "royal",
    "shiny",
    "shrill",
    "shy",
    "silent",
    "small",
    "snowy",
    "soft",
    "solitary",
    "sparkling",
    "spring",
    "square",
    "steep",
    "still",
    "summer",
    "super",
    "sweet",
    "swift",
    "throbbing",
    "tight",
    "tiny",
    "twilight",
    "wandering",
    "weathered",
    "white",
    "wild",
    "winter",
    "wispy",
    "withered",
    "yellow",
    "young",
];

const NOUNS: &[&str] = &[
    "art",
    "band",
    "bar",
    "base",
    "bird",
    "block",
    "boat",
    "bonus",
    "bread",
    "breeze",
    "brook",
    "bush",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "credit",
    "darkness",
    "dawn",
    "dew",
    "disk",
    "dream",
    "dust",
    "feather",
    "field",
    "fire",
    "firefly",
    "flower",
    "fog",
    "forest",
    "frog",
    "frost",
    "glade",
    "glitter",
    "grass",
    "hall",
    "hat",
    "haze",
    "heart",
    "hill",
    "king",
    "lab",
    "lake",
    "leaf",
    "limit",
    "math",
    "meadow",
    "mode",
    "moon",
    "morning",
    "mountain",
    "mouse",
    "mud",
    "night",
    "paper",
    "pine",
    "poetry",
    "pond",
    "queen",
    "rain",
    "recipe",
    "resonance",
    "rice",
    "river",
    "salad",
    "scene",
    "sea",
    "shadow",
    "shape",
    "silence",
    "sky",
    "smoke",
    "snow",
    "snowflake",
    "sound",
    "star",
    "sun",
    "sunset",
    "surf",
    "term",
    "thunder",
    "tooth",
    "tree",
    "truth",
    "union",
    "unit",
    "violet",
    "voice",
    "water",
    "waterfall",
    "wave",
    "wildflower",
    "wind",
    "wood",
];

/// A random `adjective-noun` name, e.g. `weathered-wildflower`.
pub fn random_name() -> String {
    let mut rng = rand::thread_rng();
    let a = ADJECTIVES.choose(&mut rng).copied().unwrap_or("quiet");
    let n = NOUNS.choose(&mut rng).copied().unwrap_or("vm");
    format!("{a}-{n}")
}

/// A random name that `taken` does not contain; after a few collisions a numeric suffix is added.
pub fn random_unique_name(taken: impl Fn(&str) -> bool) -> String {
    for _ in 0..32 {
        let n = random_name();
        if !taken(&n) {
            return n;
        }
    }
    let mut rng = rand::thread_rng();
    loop {
        let n = format!("{}-{}", random_name(), rng.gen_range(0..100_000));
        if !taken(&n) {
            return n;
        }
    }
}

/// Checks a name against DNS-1123 subdomain rules (lowercase alphanumerics, `-` and `.`,
/// starting and ending with an alphanumeric, at most 253 characters, labels of at most 63).
/// Returns the reason when invalid.
pub fn check_dns1123(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("must be at most 253 characters (is {})", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("must not contain empty dot-separated parts".into());
        }
        if label.len() > 63 {
            return Err("each dot-separated part must be at most 63 characters".into());
        }
        let b = label.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !b.iter().all(|&c| alnum(c) || c == b'-') {
            return Err("must consist of lowercase letters, digits, '-' and '.'".into());
        }
        if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err("must start and end with a lowercase letter or digit".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..200 {
            let n = random_name();
            assert!(check_dns1123(&n).is_ok(), "{n}");
            assert_eq!(n.split('-').count(), 2);
        }
    }

    #[test]
    fn dns1123() {
        for ok in ["a", "my-vm", "vm1", "a.b-c.d", "0abc"] {
            assert!(check_dns1123(ok).is_ok(), "{ok}");
        }
        for bad in ["", "My-vm", "-a", "a-", "a_b", "a..b", "a b", "é", &"a".repeat(64), &"a.".repeat(130)] {
            assert!(check_dns1123(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_avoids_taken() {
        let n = random_unique_name(|_| false);
        assert!(!n.is_empty());
        let calls = std::cell::Cell::new(0);
        let n = random_unique_name(|c| {
            calls.set(calls.get() + 1);
            calls.get() < 40 && !c.is_empty()
        });
        assert!(check_dns1123(&n).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = check_dns1123(&s);
        }
    }
}
