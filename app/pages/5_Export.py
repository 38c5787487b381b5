"""Export: the laws fitted on the other pages as JSON, their tables as CSV or Parquet, their figures as HTML or
PNG. Each page registers what it shows in this session; open a page (and fit there) to make it exportable."""

from __future__ import annotations

import streamlit as st

from app import export, ui

st.set_page_config(page_title="Export", layout="wide")
uri, all_runs = ui.store_sidebar()
runs = ui.run_filters(all_runs)
st.title("Export")

st.subheader("Runs table")
table = ui.run_table(runs)
c1, c2 = st.columns(2)
c1.download_button("Runs (CSV)", export.table_bytes(table, "csv"), "runs.csv", "text/csv", key="dl_runs_csv",
                   on_click="ignore")
c2.download_button("Runs (Parquet)", export.table_bytes(table, "parquet"), "runs.parquet",
                   "application/vnd.apache.parquet", key="dl_runs_parquet", on_click="ignore")

exports = st.session_state.get("exports", {})
laws = {f"{section}/{name}": law for section, items in exports.items() for name, law in items["laws"].items()}
if not exports:
    st.info("Nothing fitted in this session yet: open Loss laws, Hyperparameters or Critical batch size, then "
            "come back here.")
    st.stop()

st.subheader("Fitted laws")
if laws:
    st.write(", ".join(f"`{name}`" for name in laws))
    st.download_button("Fitted laws (JSON)", export.laws_json(laws), "laws.json", "application/json",
                       key="dl_laws", on_click="ignore")
else:
    st.caption("No law fitted yet.")

st.subheader("Tables")
for section, items in exports.items():
    for name, df in items["tables"].items():
        c1, c2, c3 = st.columns([2, 1, 1])
        c1.write(f"{section} / **{name}** ({df.height} rows)")
        c2.download_button("CSV", export.table_bytes(df, "csv"), f"{name}.csv", "text/csv",
                           key=f"dl_{section}_{name}_csv", on_click="ignore")
        c3.download_button("Parquet", export.table_bytes(df, "parquet"), f"{name}.parquet",
                           "application/vnd.apache.parquet", key=f"dl_{section}_{name}_parquet", on_click="ignore")

st.subheader("Figures")
png_ok, why = export.png_support()
if not png_ok:
    st.caption(why)
for section, items in exports.items():
    for name, fig in items["figures"].items():
        c1, c2, c3 = st.columns([2, 1, 1])
        c1.write(f"{section} / **{name}**")
        # deferred (callables): the bytes are made only when the button is pressed
        c2.download_button("HTML", lambda f=fig: export.figure_html(f), f"{name}.html", "text/html",
                           key=f"dl_{section}_{name}_html", on_click="ignore")
        if png_ok:
            c3.download_button("PNG", lambda f=fig: export.figure_png(f), f"{name}.png", "image/png",
                               key=f"dl_{section}_{name}_png", on_click="ignore")
