//! Task files: llama-perplexity's HellaSwag text and WinoGrande CSV, read as it reads them,
//! and JSON lines a user writes by hand. Every malformed task is refused with its line
//! number; llama-perplexity skips bad WinoGrande lines with a log message instead.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::TaskFormat;

/// One task as the file states it; `line` is where it starts (1-based).
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A context, four endings, the gold one.
    Hellaswag {
        line: usize,
        context: String,
        gold: usize,
        endings: [String; 4],
    },
    /// A sentence cut at its `_`, two fillers, the right one (0 or 1).
    Winogrande {
        line: usize,
        first: String,
        second: String,
        choices: [String; 2],
        answer: usize,
    },
    /// lm-evaluation-harness's multiple choice: the context, the choices, the right one.
    Choice {
        line: usize,
        context: String,
        choices: Vec<String>,
        answer: usize,
    },
    /// A known completion of a prompt, scored by its log-likelihood.
    Completion {
        line: usize,
        prompt: String,
        completion: String,
    },
}

impl Item {
    pub fn line(&self) -> usize {
        match self {
            Item::Hellaswag { line, .. }
            | Item::Winogrande { line, .. }
            | Item::Choice { line, .. }
            | Item::Completion { line, .. } => *line,
        }
    }
}

/// The tasks of `path` in file order, and the format they were read as.
pub fn read(path: &Path, format: Option<TaskFormat>) -> Result<(TaskFormat, Vec<Item>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
    if text.trim().is_empty() {
        bail!("{}: holds no tasks", path.display());
    }
    let format = match format {
        Some(f) => f,
        None => detect(path, &text)?,
    };
    let items = match format {
        TaskFormat::Hellaswag => hellaswag(&text),
        TaskFormat::Winogrande => winogrande(&text),
        TaskFormat::McJsonl | TaskFormat::CompletionJsonl => jsonl(&text, format),
    }
    .with_context(|| format!("{}: not a {} task file", path.display(), format.name()))?;
    if items.is_empty() {
        bail!("{}: holds no tasks", path.display());
    }
    Ok((format, items))
}

/// The format from the file's name and first line: JSON lines by their keys, a CSV whose
/// fields hold a `_` as WinoGrande, lines in sixes with a label second as HellaSwag.
fn detect(path: &Path, text: &str) -> Result<TaskFormat> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if first.trim_start().starts_with('{') {
        let keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(first)
            .with_context(|| format!("{}: line 1: not a JSON object", path.display()))?;
        if keys.contains_key("choices") {
            return Ok(TaskFormat::McJsonl);
        }
        if keys.contains_key("completion") {
            return Ok(TaskFormat::CompletionJsonl);
        }
        bail!(
            "{}: line 1 has neither \"choices\" nor \"completion\": not a task line \
             (see --task-format)",
            path.display()
        );
    }
    let lines = getlines(text);
    if ext.eq_ignore_ascii_case("csv") {
        return Ok(TaskFormat::Winogrande);
    }
    if lines.len().is_multiple_of(6) && lines.get(1).is_some_and(|l| l.trim().parse::<u8>().is_ok())
    {
        return Ok(TaskFormat::Hellaswag);
    }
    if first.contains(',') && lines.iter().take(2).any(|l| l.contains('_')) {
        return Ok(TaskFormat::Winogrande);
    }
    bail!(
        "{}: cannot tell the task format (HellaSwag text, WinoGrande CSV, JSON lines); name it \
         with --task-format",
        path.display()
    )
}

/// Lines as C++'s `std::getline` splits them: on '\n' only, no empty line after a final one.
fn getlines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if text.ends_with('\n') {
        lines.pop();
    }
    lines
}

/// Six lines per task: context, gold ending (0-3), four endings.
fn hellaswag(text: &str) -> Result<Vec<Item>> {
    let lines = getlines(text);
    if !lines.len().is_multiple_of(6) {
        bail!(
            "{} lines, not a multiple of 6 (context, label, 4 endings per task)",
            lines.len()
        );
    }
    lines
        .chunks(6)
        .enumerate()
        .map(|(i, l)| {
            let line = i * 6 + 1;
            let gold: usize = l[1].trim().parse().map_err(|_| {
                anyhow::anyhow!("line {}: label {:?} is not a number 0-3", line + 1, l[1])
            })?;
            if gold > 3 {
                bail!("line {}: label {gold} is out of range (0-3)", line + 1);
            }
            Ok(Item::Hellaswag {
                line,
                context: l[0].to_string(),
                gold,
                endings: [2, 3, 4, 5].map(|j| l[j].to_string()),
            })
        })
        .collect()
}

/// `index,sentence,option1,option2,answer`, a header line allowed first. Fields are cut as
/// llama-perplexity cuts them: at the first four commas outside quotes, the sentence's
/// surrounding quotes removed, the options and answer taken as they are.
///
/// llama-perplexity reads the file without its final newline and stops at end of file, so
/// it never scores the last line; that line is left out here too, so both score the same
/// tasks.
fn winogrande(text: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut lines = getlines(text);
    lines.pop();
    for (i, raw) in lines.into_iter().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut commas = Vec::with_capacity(4);
        let mut quoted = false;
        for (at, b) in raw.bytes().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    commas.push(at);
                    if commas.len() == 4 {
                        break;
                    }
                }
                _ => {}
            }
        }
        if commas.len() != 4 {
            bail!("line {line}: not five comma-separated fields (index,sentence,option1,option2,answer)");
        }
        let field = |a: usize, b: usize| &raw[a..b];
        let sentence = if raw.as_bytes()[commas[0] + 1] == b'"' && commas[1] >= commas[0] + 3 {
            field(commas[0] + 2, commas[1] - 1)
        } else {
            field(commas[0] + 1, commas[1])
        };
        let answer = field(commas[3] + 1, raw.len());
        let answer = match answer.trim().parse::<usize>() {
            Ok(a @ 1..=2) => a - 1,
            _ if items.is_empty() && line == 1 => continue, // the header
            _ => bail!("line {line}: answer {answer:?} is not 1 or 2"),
        };
        let Some((first, second)) = sentence.split_once('_') else {
            bail!("line {line}: the sentence has no _ to fill");
        };
        items.push(Item::Winogrande {
            line,
            first: first.to_string(),
            second: second.to_string(),
            choices: [
                field(commas[1] + 1, commas[2]).to_string(),
                field(commas[2] + 1, commas[3]).to_string(),
            ],
            answer,
        });
    }
    Ok(items)
}

#[derive(Deserialize)]
struct ChoiceLine {
    context: String,
    choices: Vec<String>,
    answer: usize,
}

#[derive(Deserialize)]
struct CompletionLine {
    prompt: String,
    completion: String,
}

/// One JSON object per line; blank lines are skipped.
fn jsonl(text: &str, format: TaskFormat) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let at = || format!("line {line}");
        let item = if format == TaskFormat::McJsonl {
            let l: ChoiceLine = serde_json::from_str(raw).with_context(|| {
                format!(
                    "{}: not {{\"context\": ..., \"choices\": [...], \"answer\": i}}",
                    at()
                )
            })?;
            if l.choices.len() < 2 {
                bail!(
                    "{}: {} choice(s); a task needs at least 2",
                    at(),
                    l.choices.len()
                );
            }
            if l.answer >= l.choices.len() {
                bail!(
                    "{}: answer {} is out of range (0-{})",
                    at(),
                    l.answer,
                    l.choices.len() - 1
                );
            }
            Item::Choice {
                line,
                context: l.context,
                choices: l.choices,
                answer: l.answer,
            }
        } else {
            let l: CompletionLine = serde_json::from_str(raw).with_context(|| {
                format!("{}: not {{\"prompt\": ..., \"completion\": ...}}", at())
            })?;
            if l.completion.is_empty() {
                bail!("{}: the completion is empty", at());
            }
            Item::Completion {
                line,
                prompt: l.prompt,
                completion: l.completion,
            }
        };
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winogrande_fields_are_cut_as_llama_perplexity_cuts_them() {
        let text = "index,sentence,option1,option2,answer\n\
                    0,\"Sarah, not Maria, so _ got it.\",Sarah,Maria,2\n\
                    1,He _ ran.,quickly,slowly,1\n\
                    2,The last line is never scored _.,a,b,1\n";
        let items = winogrande(text).unwrap();
        assert_eq!(
            items[0],
            Item::Winogrande {
                line: 2,
                first: "Sarah, not Maria, so ".into(),
                second: " got it.".into(),
                choices: ["Sarah".into(), "Maria".into()],
                answer: 1
            }
        );
        assert_eq!(items.len(), 2);
        let err = winogrande("0,No blank here.,a,b,1\n\n").unwrap_err();
        assert!(err.to_string().contains("line 1") && err.to_string().contains('_'));
        let err = winogrande("0,A _.,a,b,1\n1,A _.,a,b,3\n\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn hellaswag_tasks_are_six_lines_with_a_label_in_range() {
        let task = "ctx\n2\na\nb\nc\nd\n";
        let items = hellaswag(&task.repeat(2)).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].line(), 7);
        let err = hellaswag("ctx\n4\na\nb\nc\nd\n").unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("out of range"),
            "{err}"
        );
        assert!(hellaswag("ctx\n1\na\n").is_err());
    }

    #[test]
    fn jsonl_lines_are_checked() {
        let ok = "{\"context\":\"c\",\"choices\":[\"a\",\"b\"],\"answer\":1}\n\n";
        assert_eq!(jsonl(ok, TaskFormat::McJsonl).unwrap().len(), 1);
        for (bad, want) in [
            (
                "{\"context\":\"c\",\"choices\":[\"a\"],\"answer\":0}",
                "at least 2",
            ),
            (
                "{\"context\":\"c\",\"choices\":[\"a\",\"b\"],\"answer\":2}",
                "out of range",
            ),
            ("{\"context\":\"c\",\"choices\":[\"a\",\"b\"]", "line 2"),
        ] {
            let text = format!("{ok}{bad}\n").replace("\n\n", "\n");
            let err = format!("{:#}", jsonl(&text, TaskFormat::McJsonl).unwrap_err());
            assert!(err.contains(want), "{err}");
        }
    }
}
