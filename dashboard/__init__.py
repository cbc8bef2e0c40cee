"""kvscope's Streamlit dashboard: plain data/chart modules plus thin page files in ``views/``."""
