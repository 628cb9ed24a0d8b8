"""The paper's metrics: the report and its streaming sums, evaluation with the SAE spliced into
the model, evaluation windows from text, and evaluation of saved SAE folders."""
