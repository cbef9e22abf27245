//! Which measured task accuracies a plan shows and ranks by: one task set (the same file and
//! the same tasks drawn, `tasks_sha256`), since accuracies on different tasks do not compare.

use anyhow::{bail, Result};

use super::measured::MeasuredTask;

/// The task sets of `lines`, in order of first appearance: (label, sha256).
fn sets(lines: &[MeasuredTask]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for l in lines {
        if !out.iter().any(|(_, h)| *h == l.tasks_sha256) {
            out.push((l.label(), l.tasks_sha256.clone()));
        }
    }
    out
}

/// The lines of one task set: the one `name` picks (the task file's name, or a prefix of
/// its sha256), else the only one there is. `required` (ranking by task accuracy) turns "no
/// set" and "which set?" into errors; otherwise they show no accuracy.
pub fn select(
    lines: &[MeasuredTask],
    name: Option<&str>,
    required: bool,
) -> Result<Vec<MeasuredTask>> {
    let all = sets(lines);
    let listed = || {
        all.iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if all.is_empty() {
        if required || name.is_some() {
            bail!("ranking by task accuracy needs task results: run `quantfit eval MODELS --task FILE` and pass its results file with --results");
        }
        return Ok(Vec::new());
    }
    let picked: Vec<&(String, String)> = match name {
        Some(n) => {
            let hits: Vec<_> = all
                .iter()
                .filter(|(_, h)| {
                    lines.iter().any(|l| {
                        l.tasks_sha256 == *h && (l.task == n || (n.len() >= 6 && h.starts_with(n)))
                    })
                })
                .collect();
            if hits.is_empty() {
                bail!(
                    "--task {n}: no task results by that name or sha256; the results hold: {}",
                    listed()
                );
            }
            hits
        }
        None => all.iter().collect(),
    };
    match picked.as_slice() {
        [(_, h)] => Ok(lines
            .iter()
            .filter(|l| l.tasks_sha256 == *h)
            .cloned()
            .collect()),
        _ if !required && name.is_none() => Ok(Vec::new()),
        many => bail!(
            "the results hold accuracies on {} task sets, which do not compare; pick one with --task (its file name, or a sha256 prefix when one name has several draws): {}",
            many.len(),
            many.iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: &str, sha: &str, model: &str) -> MeasuredTask {
        MeasuredTask {
            model: model.into(),
            aliases: Vec::new(),
            quant: "Q4_K_M".into(),
            task: task.into(),
            tasks_sha256: sha.into(),
            tasks: 100,
            acc: 0.5,
            acc_err: 0.05,
            origin: "r.jsonl line 1".into(),
        }
    }

    #[test]
    fn one_set_is_picked_by_name_hash_or_being_alone() {
        let lines = vec![
            line("hs.txt", "aaaaaaaa11", "a"),
            line("hs.txt", "aaaaaaaa11", "b"),
            line("wg.csv", "bbbbbbbb22", "a"),
            line("hs.txt", "cccccccc33", "a"),
        ];
        assert_eq!(select(&lines, Some("wg.csv"), true).unwrap().len(), 1);
        assert_eq!(select(&lines, Some("aaaaaaaa"), true).unwrap().len(), 2);
        // Two draws of hs.txt: the name alone does not decide.
        let e = select(&lines, Some("hs.txt"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 task sets"), "{e}");
        let e = select(&lines, None, true).unwrap_err().to_string();
        assert!(
            e.contains("3 task sets") && e.contains("wg.csv (100 tasks"),
            "{e}"
        );
        // Shown only, not ranked: an undecided choice shows none.
        assert!(select(&lines, None, false).unwrap().is_empty());
        assert_eq!(select(&lines[..2], None, false).unwrap().len(), 2);
        let e = select(&lines, Some("nope"), false).unwrap_err().to_string();
        assert!(e.contains("no task results by that name"), "{e}");
        assert!(select(&[], None, true).is_err());
        assert!(select(&[], None, false).unwrap().is_empty());
    }
}
