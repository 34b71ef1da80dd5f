"""Export helpers: speculative pairs (:mod:`.pair`, behind `optimum-cli export dynexec`), draft weight compression, atomic writes."""
