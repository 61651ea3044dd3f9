//! `anymal data speech-instruct` end to end: the built binary writes the three instruction
//! files from the speech corpus (fetched by `scripts/fetch-assets.sh speech`), and each reads
//! back through `InstructData::read` with no problem, every task in every split, the corpus's
//! split kept, and answers as the rules say for clips whose transcripts are known.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anymal::conversation::Role;
use anymal::data::instruct::{InstructData, Placeholders};
use anymal::data::speech_instruct::{answer, question, TASKS};

fn cache() -> PathBuf {
    std::env::var_os("ANYMAL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/anymal")
        })
}

#[test]
fn speech_instruct_files_read_back_and_follow_the_rules() {
    let speech = cache().join("data/speech");
    let corpus = cache().join("data/asterisk-en");
    assert!(
        speech.join("train.jsonl").is_file() || corpus.is_dir(),
        "neither {} nor {} exists: run `scripts/fetch-assets.sh speech` first",
        speech.display(),
        corpus.display()
    );
    let out = std::env::temp_dir().join(format!("anymal-instruct-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(env!("CARGO_BIN_EXE_anymal"))
        .args(["data", "speech-instruct", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        res.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for split in ["train", "valid", "test"] {
        assert!(
            stdout.contains(&format!("{split}: ")),
            "no summary for {split}: {stdout}"
        );
    }

    let ph = Placeholders::from_registry(&anymal_encoders::ModalityRegistry::with_builtins());
    let mut clip_split: BTreeMap<String, &str> = BTreeMap::new();
    // clip -> task -> answer, over all splits.
    let mut answers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for split in ["train", "valid", "test"] {
        let file = out.join(format!("instruct-{split}.json"));
        let data = InstructData::read(&file, &ph).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(data.problems.is_empty(), "{split}: {:#?}", data.problems);
        assert!(!data.samples.is_empty(), "{split}: no samples");
        data.check_bad_fraction(0.0).unwrap();
        let mut tasks = BTreeSet::new();
        let mut two_turn = 0;
        for s in &data.samples {
            let task = s.fields["task"].clone();
            let clip = s.fields["clip"].clone();
            assert_eq!(s.id, format!("{clip}#{task}"));
            // One audio file, in the first user turn.
            assert_eq!(s.media.len(), 1, "{}", s.id);
            assert_eq!(s.media[0].modality, "audio");
            assert!(s.media[0].path.is_file(), "{}", s.media[0].path.display());
            assert!(s.turns[0].text.starts_with("<audio>\n"), "{}", s.id);
            assert_eq!(s.turns[0].role, Role::User);
            assert_eq!(s.turns.last().unwrap().role, Role::Assistant);
            if let Some(prev) = clip_split.insert(clip.clone(), split) {
                assert_eq!(prev, split, "clip {clip} is in {prev} and {split}");
            }
            if s.turns.len() == 4 {
                two_turn += 1;
                let (_, next) = task.split_once('+').unwrap();
                assert_eq!(s.turns[2].text, question(next));
            } else {
                assert_eq!(s.turns.len(), 2, "{}", s.id);
                assert_eq!(s.turns[0].text, format!("<audio>\n{}", question(&task)));
                answers
                    .entry(clip.clone())
                    .or_default()
                    .insert(task.clone(), s.turns[1].text.clone());
            }
            tasks.insert(task);
        }
        for t in TASKS {
            assert!(tasks.contains(t), "{split}: no {t} record");
        }
        if split == "train" {
            assert!(two_turn > 0, "train has no two-turn record");
        }
    }

    // Every clip has every task, and a few known transcripts give the answers of the rules.
    for (clip, a) in &answers {
        assert_eq!(a.len(), TASKS.len(), "{clip}: {a:?}");
        for t in TASKS {
            assert_eq!(a[t], answer(t, &a["repeat"]), "{clip} {t}");
        }
    }
    let known = [
        ("agent-pass", "Please enter your password followed by the pound key.", "Yes", "0", "No"),
        ("vm-passchanged", "Your passwords have been changed.", "No", "0", "No"),
        ("vm-tempgreeting2", "press 1 to record your temporary greeting, or press 2 to erase your temporary greeting", "No", "2", "Yes"),
        ("digits/7", "seven", "No", "1", "No"),
        ("spy-iax2", "IAX", "No", "0", "No"),
        ("conf-getpin", "Please enter the conference pin number.", "Yes", "0", "No"),
    ];
    for (clip, repeat, password, digits, press) in known {
        let a = answers
            .get(clip)
            .unwrap_or_else(|| panic!("clip {clip} is missing"));
        assert_eq!(a["repeat"], repeat, "{clip}");
        assert_eq!(a["password"], password, "{clip}");
        assert_eq!(a["digits"], digits, "{clip}");
        assert_eq!(a["press"], press, "{clip}");
    }
    // Descriptions of sounds are not speech: no record for them.
    assert!(!answers.contains_key("confbridge-join"));
    std::fs::remove_dir_all(&out).unwrap();
}
