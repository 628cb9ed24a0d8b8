"""The paper's metrics: report and streaming sums, evaluation with the SAE spliced into the
model, evaluation windows from text, evaluation of saved SAE folders, sweep results and plots."""
