//! `quantfit eval --task FILE`: task accuracy of each model, and with --baseline, how far
//! each moved from the baseline's answers.

use anyhow::Result;

use super::eval::{emit, inputs_of, load_noted, EvalArgs};
use crate::eval::results::{Record, RunInfo, TaskLine};
use crate::eval::task::{self, TaskResult, TaskSet};

pub fn run(args: EvalArgs, threads: usize) -> Result<()> {
    let path = args.task.clone().expect("called with --task");
    let inputs = inputs_of(
        &args.run,
        args.models.iter().chain(&args.baseline).chain([&path]),
    )?;
    if args.task_limit == Some(0) {
        anyhow::bail!("--task-limit must be at least 1");
    }
    let set = TaskSet::open(&path, args.task_format, args.task_limit)?;
    let show = !args.run.json;
    let tok = args.run.tokenizer.as_deref();
    let mut rows: Vec<TaskResult> = Vec::new();
    let mut base: Option<(TaskResult, String)> = None;
    if let Some(b) = &args.baseline {
        let m = load_noted(b, tok)?;
        let r = task::evaluate(&m, &set, show)?;
        base = Some((r.clone(), m.name.clone()));
        rows.push(r);
    }
    for p in &args.models {
        if args.baseline.as_ref() == Some(p) {
            continue;
        }
        let m = load_noted(p, tok)?;
        let mut r = task::evaluate(&m, &set, show)?;
        if let Some((b, _)) = &base {
            r.compare(b);
        }
        rows.push(r);
    }
    let baseline = base.as_ref().map(|(_, n)| n.clone());
    let lines: Vec<Record> = rows
        .iter()
        .map(|r| {
            Record::Task(TaskLine {
                result: r.clone(),
                baseline: baseline.clone(),
                run: RunInfo::here(threads),
            })
        })
        .collect();
    if emit(&args.run, &lines, &inputs)? {
        return Ok(());
    }
    print_table(&rows, &set, threads);
    if !args.run.no_results {
        println!("results appended to {}", args.run.results.display());
    }
    Ok(())
}

fn print_table(rows: &[TaskResult], set: &TaskSet, threads: usize) {
    println!(
        "task: {} ({})  tasks {}  threads {threads}",
        set.name,
        set.format.name(),
        set.items.len()
    );
    let w = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
    let compared = rows.iter().any(|r| r.acc_delta.is_some());
    print!("{:<w$} {:<8} {:>10} {:>18}", "file", "type", "MiB", "acc");
    let norm = set.format == task::TaskFormat::McJsonl;
    let loglik = set.format == task::TaskFormat::CompletionJsonl;
    if norm {
        print!(" {:>18}", "acc_norm");
    }
    if loglik {
        print!(" {:>12}", "mean loglik");
    }
    if compared {
        print!(" {:>9} {:>8}", "acc delta", "changed");
    }
    println!(" {:>9}", "tasks/s");
    for r in rows {
        print!(
            "{:<w$} {:<8} {:>10.2} {:>18}",
            r.file,
            r.quant,
            r.file_bytes as f64 / (1u64 << 20) as f64,
            format!("{:.2}% ± {:.2}", r.acc * 100.0, r.acc_err * 100.0)
        );
        if let (true, Some(a), Some(e)) = (norm, r.acc_norm, r.acc_norm_err) {
            print!(" {:>18}", format!("{:.2}% ± {:.2}", a * 100.0, e * 100.0));
        }
        if let (true, Some(l)) = (loglik, r.mean_loglik) {
            print!(" {l:>12.4}");
        }
        if compared {
            match (r.acc_delta, r.changed_fraction) {
                (Some(d), Some(c)) => print!(" {:>+8.2}% {:>7.2}%", d * 100.0, c * 100.0),
                _ => print!(" {:>9} {:>8}", "baseline", ""),
            }
        }
        println!(" {:>9.2}", r.tasks_per_s);
    }
}
