"""Making drafters: EAGLE-3 heads distilled from a target (`tandem draft data|train|eval`)."""
