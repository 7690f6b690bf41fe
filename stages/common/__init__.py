"""What every stage uses: params, one-line errors, atomic writes, and model and dataset resolution."""
